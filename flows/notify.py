"""A notification when a flow run fails, through Prefect's own mechanism: an `on_failure` state hook
of the `unlearn` and `reerase` flows sends the failed state's message (which names the gate and the
measured value) to the notification block `notify.block` names (Slack, e-mail, a custom webhook...:
any saved Prefect block with a `notify` method). Off when `notify.block` is null.

Set-up (README "Operating it"): save a block once against the Prefect server the flows use, e.g.
`SlackWebhook(url=...).save("trust-alerts")`, then `notify: {block: slack-webhook/trust-alerts}`.
A notification that cannot be sent is logged as a warning: it never hides the failure it reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def load_block(slug: str):
    """The saved notification block 'TYPE-SLUG/NAME'."""
    from prefect.blocks.core import Block

    return Block.load(slug)


def failure_message(flow_name: str, run_name: str, state_message: str | None) -> tuple[str, str]:
    """(subject, body) of the notification."""
    subject = f"trust: {flow_name} run {run_name} FAILED"
    return subject, f"{subject}\n{(state_message or 'no message').strip()[-2000:]}"


def notify_failure(flow, flow_run, state, loader: Callable[[str], object] = load_block, log=None) -> bool:
    """Prefect `on_failure` hook: send the failure to `notify.block` of the run's params file; True
    when sent. The params are the run's own (its `params_path` and `root` parameters)."""
    from trust.config import load_params

    if log is None:
        from prefect.logging import get_logger

        log = get_logger("trust.notify").warning
    params = dict(getattr(flow_run, "parameters", None) or {})
    root = Path(params.get("root", ".")).resolve()
    try:
        block = load_params(root / params.get("params_path", "params.yaml"), root=root, check_files=False).notify.block
    except Exception as e:  # noqa: BLE001 - the failure being reported matters more
        log(f"notify: could not read the run's params ({e}); no notification sent")
        return False
    if not block:
        return False
    subject, body = failure_message(getattr(flow, "name", "flow"), getattr(flow_run, "name", "?"),
                                    getattr(state, "message", None))
    try:
        loader(block).notify(body=body, subject=subject)
    except Exception as e:  # noqa: BLE001
        log(f"notify: sending to {block} failed: {e}")
        return False
    return True
