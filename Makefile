# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
# VENV defaults to .venv in the checkout; CI points it at a cache keyed by pyproject.toml.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchaudio pins that are known to load together here (see README "Install").
TORCH_PIN ?= torch==2.14.1 torchaudio==2.11.0
PYTEST_ARGS ?=

.PHONY: setup demo test lint kenlm bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev,bench,export]"
	touch $@

setup: $(VENV)/.installed
	@# Re-point the editable install at this checkout (cheap; matters when VENV is shared).
	@$(PY) -m pip install -q --no-deps -e . >/dev/null
	@PYTHON=$(PY) bash scripts/build_kenlm.sh >/dev/null || echo "warning: KenLM tools not built; LM features unavailable"

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check asr tests scripts

clean:
	rm -rf exp data/yesno
