"""Flow runs get readable names (flows/naming.py) and the re-erasure's tasks retry only what is transient."""

from datetime import datetime, timezone
from types import SimpleNamespace

from flows.naming import run_name
from flows.reerase import reerase
from flows.unlearn import unlearn
from tasks.reerase import _transient
from trust.methods.stopping import BarNotReached
from trust.registry import RegistryError

NOW = datetime(2026, 12, 3, 9, 30, 5, tzinfo=timezone.utc)


def test_run_names_say_what_and_when(tmp_path):
    (tmp_path / "params.yaml").write_text("concept:\n  name: red circle\n")
    assert run_name("unlearn", {"params_path": "params.yaml", "root": str(tmp_path)}, NOW) == \
        "unlearn-red_circle-20261203T093005Z"
    assert run_name("reerase", {"params_path": "params.yaml", "root": str(tmp_path), "model_ref": "m@production"},
                    NOW) == "reerase-red_circle-m@production-20261203T093005Z"
    # a params file that cannot be read still names the run (the flow itself then refuses it)
    assert run_name("unlearn", {"params_path": "other.yaml", "root": str(tmp_path)}, NOW) == \
        "unlearn-other-20261203T093005Z"
    assert unlearn.flow_run_name is not None and reerase.flow_run_name is not None


def _state(exc):
    def result():
        raise exc
    return SimpleNamespace(result=result)


def test_reerase_tasks_retry_transient_failures_only():
    assert _transient(None, None, _state(OSError("database is locked")))
    assert _transient(None, None, _state(RuntimeError("worker died")))
    for verdict in (ValueError("bad"), RegistryError("tampered"), FileNotFoundError("gone"),
                    BarNotReached("budget spent")):
        assert not _transient(None, None, _state(verdict)), verdict
    assert not _transient(None, None, SimpleNamespace(result=lambda: 1))
