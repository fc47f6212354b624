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

.PHONY: env run test mutate clean-env dvc-local

env: $(STAMP)

# DVC resolves the committed relative core.site_cache_dir against the process's working
# folder, which breaks `dvc exp run --temp/--queue` (their stages run in .dvc/tmp/exps/...,
# "unable to open database file"). An absolute path in .dvc/config.local (not in git; DVC
# copies it into those temp folders) keeps the site cache inside the project everywhere.
dvc-local: env
	$(BIN)/dvc config --local core.site_cache_dir "$(CURDIR)/.dvc/site-cache"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $(STAMP)

# The unlearn flow: world (up to date from git) -> prompts -> localize -> finetune ->
# evaluate (attacks) -> register, one Prefect task per DVC stage.
run: env dvc-local
	$(BIN)/trust params check
	$(BIN)/trust run

# Two pytest workers (pytest-xdist), one per core; each test file runs whole on one worker, in file
# order (the end-to-end files share one scratch project across their tests). Every test process
# uses one torch thread (tests/conftest.py, TRUST_NUM_THREADS=1 for the stages), so two workers
# do not oversubscribe the cores. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: env dvc-local
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# Mutation testing (issue 18): mutmut over the modules of `[tool.mutmut]` (pyproject.toml), each
# mutant checked by the selected tests that reach it, then the score (bench/mutation.py ->
# bench/results/mutation.md; exit 1 below 80%). Starts from scratch: a stale mutants/ folder
# would keep results of code that has changed since.
mutate: env
	rm -rf mutants
	OMP_NUM_THREADS=1 TRUST_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/python bench/mutation.py

clean-env:
	rm -rf $(VENV)
