# Two commands on a fresh machine: `make demo` and `make test`. Both create and fill .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARCH := $(shell uname -m)
# Torch builds that pip takes from this machine's disk; elsewhere pip downloads the same pins.
ifeq ($(ARCH),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test shortcut clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/debugatlas demo --out reports/demo

shortcut: $(STAMP)
	$(VENV)/bin/debugatlas demo --scenario shortcut --out reports/shortcut

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) reports/demo reports/shortcut
