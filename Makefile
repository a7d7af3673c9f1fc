# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
# VENV defaults to .venv in the checkout; CI points it at a cache keyed by pyproject.toml.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchaudio pins that are known to load together here (see README "Install").
TORCH_PIN ?= torch==2.14.1 torchaudio==2.11.0
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean

# pip's own notices (index locations, build back-end warnings) go to $(VENV)/install.log;
# the steps and their outcome are printed.
$(VENV)/.installed: pyproject.toml
	@echo "setup: virtualenv $(VENV)"
	@python3 -m venv $(VENV)
	@echo "setup: PyTorch ($(TORCH_PIN)) and the toolkit's packages (a few minutes the first time)"
	@$(PY) -m pip install -q --upgrade pip >$(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; exit 1; }
	@$(PY) -m pip install -q $(TORCH_PIN) >>$(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; exit 1; }
	@$(PY) -m pip install -q -e ".[dev,bench,export]" >>$(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; exit 1; }
	@touch $@

setup: $(VENV)/.installed
	@# Re-point the editable install at this checkout only when it points elsewhere (a shared VENV).
	@$(PY) -c "import asr, pathlib, sys; sys.exit(pathlib.Path(asr.__file__).resolve().parents[1] != pathlib.Path('$(CURDIR)').resolve())" 2>/dev/null \
	  || $(PY) -m pip install -q --no-deps -e . >>$(VENV)/install.log 2>&1
	@PYTHON=$(PY) bash scripts/build_kenlm.sh >/dev/null || echo "warning: KenLM tools not built; LM features unavailable"
	@echo "setup: ready ($$($(PY) -c 'import torch, asr; print(f"asr {asr.__version__}, torch {torch.__version__}")'))"

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check asr tests scripts benchmarks recipes
	$(VENV)/bin/mypy

clean:
	rm -rf exp data/yesno
