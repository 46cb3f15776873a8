# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build of torch lies on the build machines' disks; an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
DEMO   := data/demo

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/python -m pipeline.demo $(DEMO)

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO)
