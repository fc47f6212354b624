import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

# Two shared cores: more than one torch thread per process slows everything ~30x.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


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
