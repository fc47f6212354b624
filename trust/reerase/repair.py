"""The repair loop of a re-erasure: rounds until one passes its gates or the budget is spent.

Round r fine-tunes from the production model with every prompt that broke through so far added to
the forget prompts (the production check's, then each failed round's), and is evaluated against
the ORIGINAL base model, attacks included. The loop stops at the first round that passes; when
`max_rounds` are spent it returns the best round (lowest worst-of leak rate and kept drop) as a
candidate, never promoted. How a round runs (the stages, MLflow, logs) is the caller's
`run_round`: the flow passes Prefect tasks, a test a hand-made script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlflow import MlflowClient

from trust import tracking
from trust.reerase.check import leak_rate
from trust.reerase.params import derive_params
from trust.reerase.production import compose_delta
from trust.reerase.prompts import successful_prompts
from trust.reerase.stages import erase_prompts, run_stage
from trust.registry import failed_gates, gate_results
from trust.report.run_summary import failed_gate_text
from trust.stages import evaluate_metrics


@dataclass
class Round:
    round: int
    added: list[str]  # the prompts this round was trained on (added to the forget prompts)
    passed: bool = False
    leak_rate: float | None = None  # None: fine-tuning did not reach its bar (nothing evaluated)
    target_rate: float | None = None
    worst_drop: float | None = None
    asr: dict = field(default_factory=dict)
    failed_gates: dict = field(default_factory=dict)  # gate -> {value, limit}
    broke_through: list[dict] = field(default_factory=list)  # successful prompts of its evaluation
    error: str | None = None
    folder: str = ""

    @property
    def evaluated(self) -> bool:
        return self.leak_rate is not None

    def record(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("added", "broke_through")}
        return d | {"added_prompts": len(self.added), "broke_through": len(self.broke_through)}


@dataclass
class Repair:
    rounds: list[Round]
    chosen: Round | None  # the passing round, else the best evaluated one (candidate only), else None

    @property
    def passed(self) -> bool:
        return self.chosen is not None and self.chosen.passed


def repair(found: list[dict], max_rounds: int, max_added: int, run_round: Callable[[int, list[str]], Round],
           log: Callable[[str], None] = lambda m: None) -> Repair:
    """Run rounds 1..max_rounds; `found`: the production check's successful prompts ({prompt, ...})."""
    found = list(found)[:max_added]
    rounds: list[Round] = []
    for r in range(1, max_rounds + 1):
        rd = run_round(r, [row["prompt"] for row in found])
        rounds.append(rd)
        if rd.passed:
            return Repair(rounds, rd)
        seen = {row["prompt"] for row in found}
        new = [row for row in rd.broke_through if row["prompt"] not in seen]
        found = (found + new)[:max_added]
        log(f"round {r}: {len(new)} new prompt(s) broke through; {len(found)} to add next round")
    evaluated = [x for x in rounds if x.evaluated]
    best = min(evaluated, key=lambda x: (max(x.leak_rate, x.worst_drop), x.round)) if evaluated else None
    return Repair(rounds, best)


def failure_message(pinned: str, check: dict, rep: Repair, max_rounds: int) -> str:
    """Which gate the best round failed and by how much: what the failed flow run says."""
    if rep.chosen is None:  # no round was evaluated
        return (f"reerase: {pinned} leaks (leak rate {check['leak_rate']:.3f} > {check['gate']}) and none of "
                f"{max_rounds} repair round(s) reached its fine-tuning bar; nothing registered, production unchanged")
    b = rep.chosen
    gates = "; ".join(failed_gate_text(k, v) for k, v in b.failed_gates.items())
    return (f"reerase: {max_rounds} repair round(s) spent without passing; best round {b.round}: {gates} (leak rate "
            f"{b.leak_rate:.3f}, worst kept drop {b.worst_drop:.3f}); registered as candidate only, production "
            "unchanged")


def round_params(params, root, prod: dict, model_dir, folder, added: list[str], r: int):
    """A round's two params files: `params.yaml` (evaluate + register) against the ORIGINAL base, so
    preservation and leak never drift across rounds or re-erasures, and `params.finetune.yaml`
    (localize + finetune) from the production model; a round-specific seed (a retry is not the same
    run again), the inner attack on (reerase.adversarial) and the leak rate gated (max_asr)."""
    ft = {"seed": params.finetune.seed + r - 1, "max_seconds": params.reerase.max_seconds or params.finetune.max_seconds}
    if params.reerase.adversarial:
        # the round's bar checks what broke through (front of target.val), not a fresh inner attack: with a
        # fresh attack the bar was not reached within 900 s on the world (bench/results/tries/robust_tuning.md)
        ft["adversarial"] = {**params.finetune.adversarial.model_dump(mode="json"), "enabled": True, "check": False}
    folder = Path(folder)
    evaluate = derive_params(params, root, folder / "params.yaml", Path(prod["base_model"]), added, ft, repair=True)
    finetune = derive_params(params, root, folder / "params.finetune.yaml", Path(model_dir), added, ft, repair=True)
    return evaluate, finetune


def run_round(prod: dict, params, root, folder, model_dir, added: list[str], r: int) -> Round:
    """One repair round in `folder`, as one MLflow run `round r` (its stage runs nested under it;
    metrics target_rate, leak_rate, worst_drop, added_prompts; tag trust.round.result)."""
    from trust.methods.stopping import BarNotReached  # torch: only when a round runs

    folder = Path(folder)
    rd = Round(r, list(added), folder=str(folder))
    with tracking.group_run(f"round {r}", {"trust.stage": "reerase-round", "trust.round": str(r),
                                           "trust.parent_version": prod["pinned"]}) as run:
        client = MlflowClient()
        client.log_metric(run.info.run_id, "added_prompts", float(len(added)))
        ev_params, ft_params = round_params(params, root, prod, model_dir, folder, added, r)
        erase_prompts(ev_params, folder, added)
        run_stage("localize", ft_params, folder)
        try:
            run_stage("finetune", ft_params, folder)
        except BarNotReached as e:
            rd.error = str(e)
            client.set_tag(run.info.run_id, "trust.round.result", "fine-tuning did not reach its bar")
            return rd
        compose_delta(prod, folder, params.model.device)
        run_stage("evaluate", ev_params, folder)
        metrics = evaluate_metrics.read(folder)
        gates = gate_results(metrics, ev_params.registry.gates)
        rd.leak_rate, rd.asr = leak_rate(metrics)
        rd.target_rate = float(metrics["target_rate"])
        rd.worst_drop = float(gates["max_preservation_drop"]["value"])
        rd.passed = bool(gates["passed"])
        rd.failed_gates = {k: {"value": gates[k]["value"], "limit": gates[k]["limit"]} for k in failed_gates(gates)}
        rd.broke_through = successful_prompts(folder, params.reerase.max_added_prompts)
        for k in ("target_rate", "leak_rate", "worst_drop"):
            client.log_metric(run.info.run_id, k, float(getattr(rd, k)))
        client.set_tag(run.info.run_id, "trust.round.result", "passed" if rd.passed else
                       "failed: " + ", ".join(failed_gate_text(k, v) for k, v in rd.failed_gates.items()))
    return rd
