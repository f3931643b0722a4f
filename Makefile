# sglang-mixkv. `make bench` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test test-fast bench capacity quality serve gpu-check clean help

help:
	@echo "make bench     serve each variant, run the harness sweep, write results/<run>/"
	@echo "make capacity  max-token capacity per variant: formula, allocated pool, measured"
	@echo "make quality   recall of the trained checkpoints through the endpoint, per plan and budget"
	@echo "make test      set up .venv, then run the test suite"
	@echo "make serve     PLAN=ma-offset SIZE=tiny: serve one variant on PORT (30000)"
	@echo "make gpu-check WHEELS=.whl: the GPU check on a GPU host (DRY_RUN=1: print its commands)"

setup: $(VENV)/.mixkv-setup-ok

# Re-runs scripts/setup.sh whenever it or a requirements file changes (the script itself
# is idempotent and skips work already done).
$(VENV)/.mixkv-setup-ok: scripts/setup.sh scripts/sitecustomize.py scripts/requirements-cpu.txt scripts/requirements-dev.txt pyproject.toml
	bash scripts/setup.sh
	@touch $@

# Two pytest workers, one test module each at a time (module-scoped servers stay in one
# worker): a real SGLang server is single-threaded here, so two cores run two.
PYTEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope --durations=15 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not server" $(PYTEST_ARGS)

# Knobs (unset = the defaults for this machine; see README):
#   PLANS=standard,ma  PROMPTS=300  INPUT_LEN=31000  OUTPUT_LEN=1000  CONCURRENCY=1,8,32
#   MEM_FRACTION=0.85  KV_BUDGET=64MiB  MAX_RUNNING=300  REPEATS=3  KV_HEADS=1  CONFIG=bench.json  OUT=results/x
#   DP=2 (servers per variant behind sglang-router)  SLO=ttft_ms=500,tpot_ms=50  SHARED_PREFIX=4:256
knob = $(if $($(1)),$(2) $($(1)))
BENCH_FLAGS = $(call knob,PLANS,--plans) $(call knob,PROMPTS,--num-prompts) \
	$(call knob,INPUT_LEN,--input-len) $(call knob,OUTPUT_LEN,--output-len) \
	$(call knob,CONCURRENCY,--concurrency) $(call knob,MEM_FRACTION,--mem-fraction) \
	$(call knob,KV_BUDGET,--kv-budget) $(call knob,MAX_RUNNING,--max-running) \
	$(call knob,REPEATS,--repeats) $(call knob,KV_HEADS,--kv-heads) \
	$(call knob,DP,--dp) $(call knob,SLO,--slo) $(call knob,SHARED_PREFIX,--shared-prefix) \
	$(call knob,CONFIG,--config) $(call knob,OUT,--out) $(BENCH_ARGS)

# API_KEY=KEY (bench, serve): the servers require it, the harness and bench send
# it; it travels as the environment variable MIXKV_API_KEY, so make never echoes it.
ifdef API_KEY
export MIXKV_API_KEY := $(API_KEY)
endif
# ADMIN_API_KEY=KEY: the admin key (bench generates one for its servers otherwise).
ifdef ADMIN_API_KEY
export MIXKV_ADMIN_API_KEY := $(ADMIN_API_KEY)
endif

bench: setup
	$(PY) -m sglang_mixkv.bench $(BENCH_FLAGS)

capacity: setup
	$(PY) -m sglang_mixkv.bench --capacity-only $(BENCH_FLAGS)

# Knobs: PLANS=ma,ma@adakv=48 (default: every trained folder in QUALITY_MODELS),
#   BUDGETS=20,24,32,40,48 (a budget curve per plan)  METHODS=adakv,snapkv,recent,random
#   ADAKV_WINDOW=16  LAYOUTS=zoology,scattered  REGIMES=agnostic,aware
#   CONTEXTS=64,128  SEQUENCES=64  CHECK=16  OUT=results/quality-x
QUALITY_MODELS ?= results/quality/models/seed0
QUALITY_FLAGS = $(call knob,PLANS,--plans) $(call knob,CONTEXTS,--contexts) \
	$(call knob,BUDGETS,--budgets) $(call knob,METHODS,--methods) \
	$(call knob,ADAKV_WINDOW,--adakv-window) $(call knob,LAYOUTS,--layouts) \
	$(call knob,REGIMES,--regimes) \
	$(call knob,SEQUENCES,--sequences) $(call knob,CHECK,--check) $(call knob,OUT,--out) $(QUALITY_ARGS)
quality: setup
	$(PY) -m mixkv_bench.quality --models $(QUALITY_MODELS) $(QUALITY_FLAGS)

PLAN ?= ma
SIZE ?= tiny
PORT ?= 30000
serve: setup
	$(PY) -m sglang_mixkv.serve --plan $(PLAN) --size $(SIZE) --port $(PORT) $(SERVE_ARGS)

# The GPU check on a GPU host without a package index (scripts/gpu_check.sh): installs
# from WHEELS (made beforehand with scripts/gpu/wheels.sh), runs PART, writes OUT;
# DEADLINE (seconds for it all) and GPU (the roofline's H100|H200) reach it from the
# environment. DRY_RUN=1 prints every command instead (any machine, with the venv).
WHEELS ?= .whl
GPU_OUT ?= results/gpu-check
gpu-check: $(if $(DRY_RUN),setup)
	$(if $(DRY_RUN),PYTHON=$(PY) DRY_RUN=1,WHEELS=$(WHEELS)) OUT=$(GPU_OUT) PART=$(or $(PART),all) \
		bash scripts/gpu_check.sh

clean:
	rm -rf models .pytest_cache .hypothesis
