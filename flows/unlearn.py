"""The `unlearn` flow: prompts -> localize -> finetune -> evaluate -> register, one Prefect
task per DVC stage (plus the world's stages when the base model is the built-in world),
under one MLflow parent run whose nested runs are the stages that actually ran."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as prefect_flow_run

from flows.naming import namer
from tasks.stages import run_stage
from trust.config import load_params
from trust.stages.paths import METRICS, REGISTER_DIR, STAGES, WORLD_STAGES
from trust import tracking


def pipeline_stages(uses_world: bool) -> list[str]:
    return list(WORLD_STAGES if uses_world else ()) + list(STAGES)


@flow(name="unlearn", log_prints=True, flow_run_name=namer("unlearn"))
def unlearn(params_path: str = "params.yaml", root: str = ".") -> list[dict]:
    root_p = Path(root).resolve()
    params = load_params(root_p / params_path, root=root_p)  # validated before any work
    tracking.configure(params.tracking, root_p)
    logger = get_run_logger()
    results = []
    with tracking.flow_run("unlearn", params, root_p) as parent:
        env = {"TRUST_PARENT_RUN_ID": parent.info.run_id,
               "TRUST_PREFECT_FLOW_RUN_ID": str(prefect_flow_run.get_id() or "")}
        for stage in pipeline_stages(params.builds_world):
            results.append(run_stage(stage, str(root_p), env))
        ran = [r["stage"] for r in results if r["ran"]]
        logger.info("stages run: %s; skipped (up to date): %s", ran or "none",
                    [r["stage"] for r in results if not r["ran"]] or "none")
        for line in summary_lines(root_p):
            logger.info(line)
    return results


def summary_lines(root: Path) -> list[str]:
    """What a person wants to know after a run: is the concept gone, what did it cost, what was registered."""
    import json

    lines = []
    ev = root / METRICS / "evaluate.json"
    if ev.is_file():
        m = json.loads(ev.read_text())
        lines.append(f"target detection rate: base {m['target_rate_base']:.2f} -> erased {m['target_rate']:.2f}")
        for name, k in m.get("keep", {}).items():
            lines.append(f"kept {name}: base {k['base']:.2f} -> erased {k['tuned']:.2f} (drop {k['drop']:+.2f})")
    reg = root / REGISTER_DIR / "registration.json"
    if reg.is_file():
        r = json.loads(reg.read_text())
        lines.append(f"registered {r.get('model_name')} v{r.get('version')}: aliases {', '.join(r.get('aliases', [])) or 'none'}"
                     f"; gates {'passed' if r.get('passed') else 'FAILED'}")
    return lines
