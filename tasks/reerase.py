"""Prefect tasks of the `reerase` flow (flows/reerase.py): thin wrappers over trust/reerase.

Each task takes what Prefect can record as parameters (strings, the flow's dicts), calls the
library function and logs its outcome to the flow run. The work itself (derived params, the
production check, prompt forcing, delta composition, registration) is in trust/reerase/.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from trust import reerase
from trust.config import load_params


def _transient(task, task_run, state) -> bool:
    """Retry what may pass on a second try (a locked tracking store, a busy disk, a killed worker);
    never a verdict: bad input or a tampered package (ValueError and its kin: ParamsError,
    RegistryError, ModelLoadError), a missing file, a failed gate or a spent budget."""
    from trust.methods.stopping import BarNotReached
    from trust.stages.register import GateFailed

    try:
        state.result()
    except (ValueError, FileNotFoundError, PermissionError, BarNotReached, GateFailed):
        return False
    except Exception:
        return True
    return False


TASK = dict(cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=5,
            retry_condition_fn=_transient)


@task(name="resolve-production", **TASK)
def resolve_production(ref: str) -> dict:
    """Pin MODEL@ALIAS to a version and check its package against the manifest before using it."""
    prod = reerase.resolve_production(ref)
    get_run_logger().info("%s is version %s (package %s)", ref, prod["version"], prod["package"])
    return prod


@task(name="check-production", **TASK)
def check_production(prod: dict, params_path: str, root: str, folder: str) -> dict:
    """Evaluate the production model with the current prompt and attack sets (trust.reerase.check)."""
    check = reerase.check_production(prod, load_params(params_path), Path(root), Path(folder))
    get_run_logger().info("%s: leak rate %.3f (target rate %.3f, attack success rates %s; gate %.3f), "
                          "%d successful prompt(s)", prod["pinned"], check["leak_rate"], check["target_rate"],
                          check["asr"] or "-", check["gate"], len(check["successful"]))
    return check


@task(name="materialise-production", **TASK)
def materialise(prod: dict, folder: str, device: str) -> dict:
    """Rebuild the production model (base + delta) and save it as a model folder to fine-tune from."""
    return reerase.materialise(prod, Path(folder), device)


@task(name="repair-round", task_run_name="round-{r}", **TASK)
def repair_round(prod: dict, params_path: str, root: str, folder: str, model_dir: str, added: list[str], r: int):
    """One repair round: fine-tune from production with `added` prompts, evaluate against the original base."""
    return reerase.run_round(prod, load_params(params_path), Path(root), Path(folder), Path(model_dir), added, r)


@task(name="reerase-register", **TASK)
def register(prod: dict, check: dict, params_path: str, root: str, folder: str) -> dict:
    """Package the composed delta and register it (candidate; production only if the gates pass)."""
    return reerase.register(prod, check, load_params(params_path), Path(root), Path(folder))
