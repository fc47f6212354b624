import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per process, for the stages the tests start as subprocesses too: `make test` runs two
# workers on two cores, and oversubscribed torch threads slow everything many times over.
os.environ.setdefault("TRUST_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Never the operator's Prefect home: `make test` exports the project's PREFECT_HOME (for `make run`),
# and a flow run a test starts in-process would show up in their `prefect flow-run ls`.
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="trust-tests-prefect-")

from pathlib import Path

import pytest
import torch

# Two shared cores: more than one torch thread per process slows everything ~30x.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]

if "MUTANT_UNDER_TEST" in os.environ:  # under `make mutate`
    # mutmut forks one child per mutant from a parent that has drawn tqdm bars. tqdm's default write
    # lock is a multiprocessing lock shared by all those forks: a child that dies holding it (stopped
    # at its time limit, or killed mid-bar) leaves every later child that draws a bar waiting for ever
    # (seen: each such mutant "timed out" after minutes of sleeping). A lock of each process's own,
    # and no monitor thread that could hold it at the moment of a fork.
    import threading

    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())
    tqdm.tqdm.monitor_interval = 0

# Names mutmut gives its own passes (not a mutant): stats collection, the clean and forced-fail runs.
_MUTMUT_PASSES = {"", "stats", "fail", "mutant_generation", "list_all_tests"}


def pytest_collection_modifyitems(config, items):
    """Under `make mutate`, run a mutant's covering tests fastest first.

    mutmut runs each mutant's tests with -x, in the order of a set: a mutant that a 0.1 s test
    kills could wait behind a 15 s one. Sorting by the durations mutmut measured in its stats pass
    (mutants/mutmut-stats.json; the tests run from mutants/) ends each killed mutant at its fastest
    killing test. Outside mutation testing the order is untouched.
    """
    if os.environ.get("MUTANT_UNDER_TEST", "") in _MUTMUT_PASSES:
        return
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    import json

    duration = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: duration.get(item.nodeid, 0.0))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def bench_script():
    """Import a bench/ script by file (bench scripts are run by path, not installed): bench_script("robust")."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture(scope="session")
def world_tokenizer():
    from trust.world.captions import all_words
    from trust.world.tokenizer import build_tokenizer

    return build_tokenizer(all_words())


@pytest.fixture(scope="session")
def shipped_params():
    from trust.config import load_params

    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def shipped_world(shipped_params):
    from trust.models import load_model

    return load_model(ROOT / shipped_params.world.model_dir)


@pytest.fixture(scope="session")
def shipped_classifier(shipped_params):
    from trust.world.classifier import ConceptClassifier

    return ConceptClassifier.load(ROOT / shipped_params.world.classifier_dir)


@pytest.fixture(scope="session")
def empty_mlflow_db() -> Path:
    """An MLflow sqlite store with its tables created, made once per MLflow version and kept in the
    temp folder: each test copies it rather than paying MLflow's table creation and migrations
    (seconds) for a store of its own; mutmut's workers, each a new pytest session, reuse it too."""
    import os
    import subprocess
    import sys
    import tempfile

    import mlflow

    db = Path(tempfile.gettempdir()) / f"trust-tests-mlflow-{mlflow.__version__}.db"
    if not db.is_file():
        part = db.with_name(f"{db.name}.{os.getpid()}.part")
        # in a child process, so this session's MLflow holds no engine on the file being copied
        subprocess.run([sys.executable, "-c", "import sys, mlflow; mlflow.set_tracking_uri('sqlite:///' + sys.argv[1]); "
                        "mlflow.MlflowClient().search_experiments()", str(part)], check=True, capture_output=True,
                       env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        os.replace(part, db)  # whole or not at all: a concurrent session sees no half-made store
    return db
