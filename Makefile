# The two commands of the README: `make reproduce` and `make test`. Every target bootstraps the
# project's virtual environment first: created if missing, (re)installed only when pyproject.toml
# changed since the last install, otherwise untouched.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev
CORES ?= 2
PRESET ?= mini
GRID ?= experiments/paper.yaml
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.PHONY: reproduce smoke test test-slow bench lint mlflow-ui clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { command -v $(PY) >/dev/null 2>&1 || PY=python3; $(PY) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]' 2>&1 \
	  | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import rl_core, torch, snakemake, mlflow" && touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) \
	  --configfile $(GRID) --config preset=$(PRESET)

smoke: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) \
	  --configfile experiments/smoke.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(CORES) -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python -m rl_core.bench

lint: $(STAMP)
	$(BIN)/ruff check .

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///results/mlflow.db

clean:
	rm -rf results .snakemake .pytest_cache
