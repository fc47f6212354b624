"""MLflow model registry: versions of tuned-weights packages, aliases and gates.

A package is a folder (`delta.safetensors`, `pipeline.json`, `model_card.md`, ..., and the `MLmodel`
file that makes it an MLflow pyfunc model: trust/pyfunc_model.py). It is
copied to a content-addressed folder `<root>/mlartifacts/registry/<name>/<hash16>/` with a
`manifest.json` of sha256 hashes and registered with `create_model_version(source=<folder>)`.
The package hash and every file's hash are also recorded in the version's tags, in the
tracking store: the package folder cannot rewrite them, so a package whose files *and*
manifest were edited still fails `check_version` (what `trust lineage`, `trust load` and the
re-erasure read before using a version). Every version gets alias `candidate`; `production`
moves only when every gate passes, so a worse model can never silently replace a good one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from trust.registry_aliases import move_alias
from trust.tracking import flatten
from trust.utils.safetensors_io import write_json

if TYPE_CHECKING:  # type hints only
    from trust.config import GateParams, Params

MANIFEST = "manifest.json"
PIPELINE = "pipeline.json"
DELTA = "delta.safetensors"
CANDIDATE, PRODUCTION = "candidate", "production"
MAX_TAG_CHARS = 5000
HASH_TAG, FILES_TAG = "package_sha256", "package_files"
REF_FORMS = "NAME@ALIAS (e.g. trust-world-circle@production) or NAME/VERSION (e.g. trust-world-circle/3)"


class RegistryError(ValueError):
    """A registry reference or package that cannot be used; the message says what exists instead."""


# -- gates ---------------------------------------------------------------------------
def gate_results(evaluate_metrics: dict, gates: GateParams) -> dict:
    """Check `metrics/evaluate.json` against the gates; NaN values fail (never pass by accident)."""
    if "target_rate" not in evaluate_metrics:
        raise ValueError("evaluate metrics lack 'target_rate'; expected the shape of metrics/evaluate.json")
    rate = float(evaluate_metrics["target_rate"])
    base = float(evaluate_metrics.get("target_rate_base", float("nan")))
    drop = max((float(k["drop"]) for k in (evaluate_metrics.get("keep") or {}).values()), default=0.0)
    out = {
        "max_target_rate": {"value": rate, "limit": gates.max_target_rate, "passed": rate <= gates.max_target_rate},
        # An erasure is only measured where the base showed the concept (NaN: not measured, fails)
        "min_base_target_rate": {"value": base, "limit": gates.min_base_target_rate,
                                 "passed": base >= gates.min_base_target_rate},
        "max_preservation_drop": {"value": drop, "limit": gates.max_preservation_drop,
                                  "passed": drop <= gates.max_preservation_drop},
    }
    if not out["min_base_target_rate"]["passed"]:
        out["min_base_target_rate"]["note"] = ("the base model hardly shows the concept: nothing was there to erase "
                                               "(check concept.detect, the target prompts and the detector)")
    targets = evaluate_metrics.get("targets")
    if targets:  # several concepts: each one gated; the values above are the worst concept's
        over = [n for n, r in targets.items() if not float(r["tuned"]) <= gates.max_target_rate]
        under = [n for n, r in targets.items() if not float(r["base"]) >= gates.min_base_target_rate]
        out["max_target_rate"]["concepts"] = {n: float(r["tuned"]) for n, r in targets.items()}
        out["min_base_target_rate"]["concepts"] = {n: float(r["base"]) for n, r in targets.items()}
        if over:
            out["max_target_rate"]["note"] = "over the limit: " + ", ".join(
                f"{n} {float(targets[n]['tuned']):.3f}" for n in over)
        if under:
            out["min_base_target_rate"]["note"] = ("the base model hardly shows " + ", ".join(
                f"{n} ({float(targets[n]['base']):.3f})" for n in under) + ": nothing was there to erase")
    if not evaluate_metrics.get("keep"):
        # concept.keep: [] (SD): no kept concept to compare. Preservation is then measured by FID
        # (max_fid_delta) or not at all, and "not measured" is never a pass.
        fid_gated = gates.max_fid_delta is not None
        out["max_preservation_drop"].update(
            passed=fid_gated, measured=False,
            note="no kept concepts (concept.keep is empty); preservation gated by max_fid_delta" if fid_gated else
            "not measured: no kept concepts (concept.keep is empty) and no FID gate; set register.gates.max_fid_delta "
            "with evaluate.inception_weights and evaluate.fid_reference, or add kept concepts")
    if gates.max_fid_delta is not None:
        fid = (evaluate_metrics.get("fidelity") or {}).get("fid") or {}
        if "delta" not in fid:
            raise ValueError("register.gates.max_fid_delta is set but metrics/evaluate.json has no FID delta "
                             f"({fid.get('reason', 'FID against a reference set was not computed')}): set "
                             "evaluate.inception_weights and evaluate.fid_reference, or max_fid_delta: null")
        delta = float(fid["delta"])
        out["max_fid_delta"] = {"value": delta, "limit": gates.max_fid_delta, "passed": delta <= gates.max_fid_delta}
    if gates.max_asr is not None:
        asr = evaluate_metrics.get("asr")
        if not asr:
            raise ValueError("register.gates.max_asr is set but metrics/evaluate.json has no 'asr': "
                             "run evaluate with attacks, or set max_asr: null")
        worst = max(float(v) for v in asr.values())
        out["max_asr"] = {"value": worst, "limit": gates.max_asr, "passed": worst <= gates.max_asr,
                          "attack": max(asr, key=lambda k: float(asr[k]))}
    out["passed"] = all(v["passed"] for v in out.values())
    return out


def failed_gates(gates: dict) -> list[str]:
    return [k for k, v in gates.items() if isinstance(v, dict) and not v["passed"]]


# -- package hashing -----------------------------------------------------------------
def _hash_bytes_of(h, path: Path) -> None:
    """Feed the file's bytes to the hash `h` in 1 MiB chunks (a package's delta can be GBs)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    _hash_bytes_of(h, path)
    return h.hexdigest()


def _package_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)


def package_hash(folder: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order (manifest excluded)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in _package_files(folder):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        _hash_bytes_of(h, p)
        h.update(b"\0")
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in _package_files(folder)}


def check_files(folder: Path) -> list[dict]:
    """Compare a package folder with its manifest: one row per file (ok/modified/missing/unexpected)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise RegistryError(f"{folder} has no {MANIFEST}: it was not registered by trust or was tampered with")
    return _compare(json.loads(manifest_path.read_text()), file_hashes(folder))


def _compare(expected: dict[str, str], actual: dict[str, str]) -> list[dict]:
    """One row per file: ok / modified / missing (expected, not there) / unexpected (there, not expected)."""
    rows = [{"path": rel, "expected": want, "actual": actual.get(rel),
             "status": "missing" if rel not in actual else "ok" if actual[rel] == want else "modified"}
            for rel, want in sorted(expected.items())]
    return rows + [{"path": rel, "expected": None, "actual": got, "status": "unexpected"}
                   for rel, got in sorted(actual.items()) if rel not in expected]


def check_version(mv: ModelVersion) -> list[dict]:
    """Compare a version's package folder with what the REGISTRY recorded at registration (the
    version's tags), not with the folder's own manifest: one row per file (ok / modified /
    missing / unexpected), plus a `manifest.json` row when the manifest was rewritten and a
    `(package)` row when the whole-package hash differs. A version registered before per-file
    hashes were tagged is checked against its package hash, and its manifest for the file rows."""
    folder = source_folder(mv)
    if not folder.is_dir():
        raise RegistryError(f"{mv.name}/{mv.version}: package folder {folder} does not exist; "
                            "was the project's mlartifacts/ folder moved or deleted?")
    tags = dict(mv.tags or {})
    if FILES_TAG not in tags:
        rows = check_files(folder)
    else:
        expected: dict[str, str] = json.loads(tags[FILES_TAG])
        rows = _compare(expected, file_hashes(folder))
        manifest = folder / MANIFEST
        try:
            written = json.loads(manifest.read_text()) if manifest.is_file() else None
        except ValueError:
            written = "unreadable"
        if written != expected:
            rows.append({"path": MANIFEST, "expected": None, "actual": sha256_file(manifest) if manifest.is_file() else None,
                         "status": "rewritten" if manifest.is_file() else "missing"})
    recorded = tags.get(HASH_TAG)
    if recorded is None:
        rows.append({"path": "(package)", "expected": None, "actual": package_hash(folder),
                     "status": "unrecorded (the version has no package_sha256 tag)"})
    elif (got := package_hash(folder)) != recorded:
        rows.append({"path": "(package)", "expected": recorded, "actual": got, "status": "modified"})
    return rows


def verified_folder(mv: ModelVersion, ref: str, action: str) -> Path:
    """The version's package folder, refused (RegistryError naming every changed file) unless it
    is exactly what was registered."""
    bad = [f"{r['path']} ({r['status']})" for r in check_version(mv) if r["status"] != "ok"]
    if bad:
        raise RegistryError(f"{ref} (v{mv.version}): package {source_folder(mv)} is not what was registered: "
                            f"{', '.join(bad)}; refusing to {action} (run `trust lineage {ref}`)")
    return source_folder(mv)


def _store(package_dir: Path, dest: Path) -> None:
    """Copy the package to `dest` whole or not at all, write its manifest, make files read-only."""
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(package_dir, tmp, ignore=shutil.ignore_patterns(MANIFEST))
    write_json(file_hashes(tmp), tmp / MANIFEST)
    for p in tmp.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


# -- registration --------------------------------------------------------------------
def _tags(lineage: dict, gates: dict, digest: str) -> dict[str, str]:
    # each params section is one compact JSON tag (flattened, they were ~100 of a version's ~125 tags
    # in one box of the MLflow UI); the package's model card and the stage runs hold them too
    sections = lineage.get("params") if isinstance(lineage.get("params"), dict) else {}
    rest = {k: v for k, v in lineage.items() if not (k == "params" and sections)}
    tags = {f"lineage.{k}": str(v)[:MAX_TAG_CHARS] for k, v in flatten(rest).items()}
    tags |= {f"lineage.params.{k}": json.dumps(v, sort_keys=True, separators=(",", ":"))[:MAX_TAG_CHARS]
             for k, v in sections.items()}
    tags |= {f"gate.{k}": str(v).lower() if isinstance(v, bool) else str(v)
             for k, v in flatten({g: r for g, r in gates.items() if isinstance(r, dict)}).items()}
    tags |= {"gates.passed": str(gates["passed"]).lower(), HASH_TAG: digest}
    return tags


def register_version(params: Params, root: Path, package_dir: Path, metrics: dict, lineage: dict,
                     run_id: str | None) -> dict:
    """Register `package_dir` as a new version; `production` moves only if every gate passes.

    A version that fails a gate is still registered (alias `candidate`) so it can be inspected.
    Call `tracking.configure` first.
    """
    package_dir = Path(package_dir)
    missing = [f for f in (DELTA, PIPELINE) if not (package_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"package {package_dir} lacks {', '.join(missing)}")
    name = params.registry.model_name
    # the folder is also an MLflow pyfunc model: mlflow.pyfunc.load_model("models:/NAME@ALIAS") generates
    from trust.pyfunc_model import write_mlmodel

    write_mlmodel(package_dir, DELTA)
    digest = package_hash(package_dir)
    dest = Path(root).resolve() / "mlartifacts" / "registry" / name / digest[:16]
    # Content-addressed: an existing copy is reused unless someone changed it since.
    if not dest.is_dir() or any(r["status"] != "ok" for r in _safe_check(dest)) or package_hash(dest) != digest:
        _store(package_dir, dest)
    hashes = file_hashes(dest)
    files = json.dumps(hashes, sort_keys=True, separators=(",", ":"))
    if len(files) > MAX_TAG_CHARS:
        raise RegistryError(f"package {package_dir} has too many files ({len(hashes)}) for their hashes "
                            f"to fit one registry tag ({MAX_TAG_CHARS} characters); keep a package to its model files")

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"trust erasure of '{params.concept_name}'")
    gates = gate_results(metrics, params.registry.gates)
    verdict = "passed" if gates["passed"] else "failed: " + ", ".join(failed_gates(gates))
    mv = client.create_model_version(name, source=str(dest), run_id=run_id,
                                     tags=_tags(lineage, gates, digest) | {FILES_TAG: files},
                                     description=f"erases '{params.concept_name}'; gates {verdict}")
    move_alias(client, name, CANDIDATE, mv.version)  # each move recorded on both versions (registry_aliases.py)
    aliases = [CANDIDATE]
    if gates["passed"]:
        move_alias(client, name, PRODUCTION, mv.version)
        aliases.append(PRODUCTION)
    return {"model_name": name, "version": int(mv.version), "aliases": aliases, "gates": gates,
            "passed": gates["passed"], "failed_gates": failed_gates(gates), "source": str(dest),
            "package_sha256": digest}


def _safe_check(folder: Path) -> list[dict]:
    try:
        return check_files(folder)
    except (RegistryError, ValueError, OSError):
        return [{"status": "broken"}]


# -- lookup --------------------------------------------------------------------------
def parse_ref(ref: str) -> tuple[str, str, str]:
    """`NAME@ALIAS` -> (name, "alias", alias); `NAME/VERSION` -> (name, "version", version)."""
    if m := re.fullmatch(r"([^@/\s]+)@([A-Za-z0-9_-]+)", ref):
        return m[1], "alias", m[2]
    if m := re.fullmatch(r"([^@/\s]+)/(\d+)", ref):
        return m[1], "version", m[2]
    raise RegistryError(f"{ref!r} is not a model reference; use {REF_FORMS}")


def resolve(ref: str) -> ModelVersion:
    """The registered version `ref` names; errors list the models, aliases or versions that exist."""
    name, kind, value = parse_ref(ref)
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(f"{ref}: no registered model {name!r}; registered models: {known or 'none'}") from None
    if kind == "alias":
        aliases = dict(model.aliases or {})
        if value not in aliases:
            have = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
            raise RegistryError(f"{ref}: model {name!r} has no alias {value!r}; its aliases: {have}")
        return client.get_model_version(name, aliases[value])
    try:
        return client.get_model_version(name, value)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(f"{ref}: model {name!r} has no version {value}; its versions: {versions or 'none'}") from None


def source_folder(mv: ModelVersion) -> Path:
    """The package folder a version points at (plain path or file:// URI)."""
    src = mv.source
    if src.startswith("file:"):
        return Path(unquote(urlparse(src).path))
    if "://" in src:
        raise RegistryError(f"{mv.name}/{mv.version}: source {src} is not a local folder; trust packages are local")
    return Path(src)


def load_registered(ref: str, device: str = "cpu"):
    """Rebuild the registered pipeline's parts: the recorded base model plus the version's delta.

    The package is checked against what the registry recorded first (never skipped: nothing loads
    a package that is not what was registered), and `apply_delta` refuses a base model whose
    fingerprint differs from the one the delta was made from.
    """
    return open_registered(ref, device, "load it")[0]


def open_registered(ref: str, device: str = "cpu", action: str = "load it"):
    """`load_registered`, and the version, its verified package folder and its pipeline.json:
    (parts, ModelVersion, folder, spec), for callers that also record what they loaded."""
    mv = resolve(ref)
    folder = verified_folder(mv, ref, action)
    if not folder.is_dir():
        raise RegistryError(f"{ref} (v{mv.version}): package folder {folder} does not exist; "
                            "was the project's mlartifacts/ folder moved or deleted?")
    for f in (PIPELINE, DELTA):
        if not (folder / f).is_file():
            raise RegistryError(f"{ref} (v{mv.version}): package {folder} has no {f}")
    parts, spec = rebuild(folder, f"{ref} (v{mv.version})", device)
    return parts, mv, folder, spec


def rebuild(folder: Path, label: str, device: str = "cpu"):
    """(parts, pipeline.json) of a checked package folder: its recorded base model with its delta applied
    (`apply_delta` refuses another base). `label` names the package in the error."""
    from trust.delta import apply_delta
    from trust.models import load_model

    spec = json.loads((folder / PIPELINE).read_text())
    base = spec.get("base_model")
    if not base or not Path(base).exists():
        raise RegistryError(f"{label}: base model {base!r} recorded in {folder / PIPELINE} "
                            f"does not exist (fingerprint {spec.get('base_fingerprint')}); restore it at that path")
    return apply_delta(load_model(Path(base), device=device), folder / DELTA), spec


# -- model card ----------------------------------------------------------------------
def _detector_words(metrics: dict, detect: dict) -> str:
    """Which detector decided the rates: the world classifier's labels, or NudeNet/CLIP with their settings."""
    # pragma: no mutate block (text layout only; `make mutate` leaves it out, see README)
    settings = metrics.get("settings") or {}
    det = settings.get("target_detector") or {}
    if settings.get("detector") in (None, "world_classifier", "world classifier"):
        return f"the world classifier as {detect}"
    extra = ", ".join(f"{k} {det[k]}" for k in ("threshold", "classes", "labels") if k in det)
    return f"{settings['detector']}" + (f" ({extra})" if extra else "")


def _attack_and_fidelity_lines(metrics: dict) -> list[str]:
    """The card's attack table (ASR per attack, prompts each ran on) and fidelity lines (FID or what
    it needs), worded as the report words them (trust/report/html.py metrics_rows)."""
    from trust.report.html import attack_prompts, metrics_rows

    lines = ["", "## Attacks", ""]
    asr = metrics.get("asr") or {}
    if asr:
        prompts = attack_prompts(metrics)
        lines += ["| attack | prompts | ASR |", "|---|---|---|"]
        if metrics.get("pre_asr") is not None:
            lines.append(f"| none (the prompt set as written: pre-ASR) | {prompts.get('prompt_set', '-')} | "
                         f"{float(metrics['pre_asr']):.3f} |")
        lines += [f"| {k} | {prompts.get(k, '-')} | {float(v):.3f} |" for k, v in asr.items()]
    else:
        lines.append("No attack ran (evaluate.attacks.run is empty).")
    rows = [r for r in metrics_rows(metrics) if not r[0].startswith(("target rate", "pre-ASR", "ASR ", "kept "))]
    lines += ["", "## Fidelity", ""]
    lines += [f"- {k}: {v}" for k, v in rows] or ["No fidelity measure was computed."]
    return lines


def write_model_card(path: Path, params: Params, metrics: dict, gates: dict, lineage: dict,
                     grid_paths: list[str]) -> None:
    """The human-readable record shipped inside the package: what was erased, how well, from what.

    `grid_paths` are image paths relative to the card's folder.
    """
    # pragma: no mutate block (text layout only; `make mutate` leaves it out, see README)
    concepts = params.concepts
    method = lineage.get("method") or params.finetune.method
    rate = lambda x: f"{float(x):.3f}"  # noqa: E731
    kinds = "; ".join(f"{c.name}: {c.kind}, detected by {_detector_words(metrics, c.detect)}" for c in concepts)
    lines = [
        f"# Erasure of '{params.concept_name}' with {method}", "",
        (f"Concept kind: {concepts[0].kind}; detected by {_detector_words(metrics, concepts[0].detect)}. "
         if len(concepts) == 1 else f"{len(concepts)} concepts erased in one run ({kinds}). ")
        + f"Registered model name: `{params.registry.model_name}`.", "",
        "## Metrics", "", "| concept | base | tuned | drop |", "|---|---|---|---|",
    ]
    targets = metrics.get("targets") or {params.concept_name: {"base": metrics["target_rate_base"],
                                                               "tuned": metrics["target_rate"]}}
    lines += [f"| target ({n}) | {rate(v['base'])} | {rate(v['tuned'])} | |" for n, v in targets.items()]
    for k, v in (metrics.get("keep") or {}).items():
        lines.append(f"| kept: {k} | {rate(v['base'])} | {rate(v['tuned'])} | {rate(v['drop'])} |")
    lines += _attack_and_fidelity_lines(metrics)
    lines += ["", "## Gates", "", "| gate | value | limit | result |", "|---|---|---|---|"]
    for k, v in gates.items():
        if isinstance(v, dict):
            note = f" ({v['note']})" if v.get("note") else ""
            verdict = "pass" if v["passed"] else "**not measured**" if v.get("measured") is False else "**FAIL**"
            value = "-" if v.get("measured") is False else rate(v["value"])
            lines.append(f"| {k} | {value}{note} | {v['limit']} | {verdict} |")
    lines += ["", f"Overall: {'passed' if gates.get('passed') else '**failed** (production alias not moved)'}", ""]
    lines += ["## Lineage", "",
              f"- base model: `{lineage.get('base_model', params.model.base)}`",
              f"- base fingerprint: `{lineage.get('base_fingerprint')}`",
              f"- git commit: `{lineage.get('git_commit')}`"]
    from trust.stages.paths import pipeline_stages

    ran = pipeline_stages(params.builds_world)  # an SD version's card lists no world stage
    dvc = lineage.get("dvc") or {}
    lines += [f"- DVC stage `{s}`: `{dvc[s]}`" for s in ran if s in dvc]
    lines += ["", "### Fine-tuning parameters", "", "```json",
              json.dumps(params.finetune.model_dump(mode="json"), indent=2, sort_keys=True), "```", ""]
    if grid_paths:
        lines += ["## Images", ""]
        lines += [f"![{Path(g).stem}]({Path(g).as_posix()})" for g in grid_paths]
        lines.append("")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))


__all__ = ["RegistryError", "gate_results", "register_version", "resolve", "load_registered", "write_model_card",
           "check_files", "check_version", "verified_folder", "package_hash", "source_folder", "parse_ref"]
