# The two commands a new user needs: `make train` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: train test test-fast env clean

# torch/torchvision come unpinned from pyproject.toml (README.md, "Two commands": why)
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing strongpose and its dependencies into $(VENV) (about a minute)..."
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' >$(VENV)/pip.log 2>&1 \
		|| (grep -v 'is ignored: it is neither' $(VENV)/pip.log; exit 1)
	@touch $@

env: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) -m strongpose.train $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 $(ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -n 2 -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
