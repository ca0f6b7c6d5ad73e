# Two commands do everything: `make demo` (run the tutorials on the embedded data) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Re-install only when pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT    ?= out
PRESET ?= demo

.PHONY: setup test demo lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	sh tests/browser_setup.sh || echo "browser_setup: Chromium not installed; the browser tests will skip"
	$(PY) -m pytest -q -rs

demo: $(STAMP)
	$(PY) -m cpcl_kit demo --out $(OUT) --preset $(PRESET)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/ssl_gain.py

clean:
	rm -rf $(OUT) .pytest_cache
