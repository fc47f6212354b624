"""Re-erasure of a registered production model, as plain library functions.

The `reerase` flow (flows/reerase.py, Prefect tasks in tasks/reerase.py) strings these together:

- production.py: pin `MODEL@ALIAS` and check its package against the manifest; rebuild it as a
  model folder; compose the new delta with the production one against the ORIGINAL base.
- check.py: re-evaluate the production model with the current prompt and attack sets; its leak rate.
- params.py: the params.yaml a workspace stage runs with (paths absolute, another base model,
  successful prompts added to the forget prompts).
- prompts.py: the evaluate stage's successful prompts; forcing them into the forget set.
- stages.py: library stages (`trust.stages.<stage>.run`) run in a workspace folder.
- register.py: package, lineage (naming the parent version) and registration of the new version.
- repair.py: the repair rounds (fine-tune from production with what broke through, evaluate against
  the original base) until one passes or the budget is spent.

Everything works in a workspace folder given by the caller; nothing here touches the project's
own DVC outputs, and nothing imports Prefect.
"""

from trust.reerase.check import check_production, leak_rate
from trust.reerase.params import derive_params
from trust.reerase.production import DELTA_FROM_PARENT, compose_delta, materialise, resolve_production
from trust.reerase.prompts import SUCCESSFUL, force_prompts, successful_prompts
from trust.reerase.register import PARENT_TAG, register
from trust.reerase.repair import Repair, Round, failure_message, repair, run_round
from trust.reerase.stages import erase_prompts, run_stage

__all__ = ["DELTA_FROM_PARENT", "PARENT_TAG", "SUCCESSFUL", "check_production", "compose_delta", "derive_params",
           "erase_prompts", "failure_message", "force_prompts", "leak_rate", "materialise", "register", "Repair",
           "repair", "resolve_production", "Round", "run_round", "run_stage", "successful_prompts"]
