# The two commands of the README: `make run` (main job on the built-in world) and
# `make test`. Both create the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
# CPU machines pin the local CPU torch wheel; GPU users: `make run CONSTRAINTS=` after
# installing their own CUDA torch into $(VENV) (see README).
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Keep every tool's state inside the project and its telemetry off.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export TRANSFORMERS_VERBOSITY := error
export HF_HUB_OFFLINE := 1

.PHONY: env run test clean-env

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $(STAMP)

# The unlearn flow: world (up to date from git) -> prompts -> localize -> finetune ->
# evaluate (attacks) -> register, one Prefect task per DVC stage.
run: env
	$(BIN)/trust params check
	$(BIN)/trust run

test: env
	$(BIN)/python -m pytest -q

clean-env:
	rm -rf $(VENV)
