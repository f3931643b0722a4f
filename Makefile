# sglang-mixkv. `make bench` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test test-fast bench capacity serve clean help

help:
	@echo "make bench     serve each variant, run the harness sweep, write results/<run>/"
	@echo "make capacity  max-token capacity per variant: formula, allocated pool, measured"
	@echo "make test      set up .venv, then run the test suite"
	@echo "make serve     PLAN=ma-offset SIZE=tiny: serve one variant on PORT (30000)"

setup: $(VENV)/.mixkv-setup-ok

# Re-runs scripts/setup.sh whenever it or a requirements file changes (the script itself
# is idempotent and skips work already done).
$(VENV)/.mixkv-setup-ok: scripts/setup.sh scripts/sitecustomize.py scripts/requirements-cpu.txt scripts/requirements-dev.txt pyproject.toml
	bash scripts/setup.sh
	@touch $@

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not server" $(PYTEST_ARGS)

# Knobs (unset = the defaults for this machine; see README):
#   PLANS=standard,ma  PROMPTS=300  INPUT_LEN=31000  OUTPUT_LEN=1000  CONCURRENCY=1,8,32
#   MEM_FRACTION=0.85  KV_BUDGET=64MiB  MAX_RUNNING=300  CONFIG=bench.json  OUT=results/x
knob = $(if $($(1)),$(2) $($(1)))
BENCH_FLAGS = $(call knob,PLANS,--plans) $(call knob,PROMPTS,--num-prompts) \
	$(call knob,INPUT_LEN,--input-len) $(call knob,OUTPUT_LEN,--output-len) \
	$(call knob,CONCURRENCY,--concurrency) $(call knob,MEM_FRACTION,--mem-fraction) \
	$(call knob,KV_BUDGET,--kv-budget) $(call knob,MAX_RUNNING,--max-running) \
	$(call knob,CONFIG,--config) $(call knob,OUT,--out) $(BENCH_ARGS)

bench: setup
	$(PY) -m sglang_mixkv.bench $(BENCH_FLAGS)

capacity: setup
	$(PY) -m sglang_mixkv.bench --capacity-only $(BENCH_FLAGS)

PLAN ?= ma
SIZE ?= tiny
PORT ?= 30000
serve: setup
	$(PY) -m sglang_mixkv.serve --plan $(PLAN) --size $(SIZE) --port $(PORT) $(SERVE_ARGS)

clean:
	rm -rf models .pytest_cache .hypothesis
