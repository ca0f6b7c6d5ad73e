# Two commands do everything: `make demo` (run the tutorials on the embedded data) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Re-install only when pyproject.toml or constraints.txt (the tested versions) changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
OUT    ?= out
PRESET ?= demo
# Test files run in this many worker processes, one torch thread each: small CPU nets use two
# one-thread processes better than one two-thread one.
TEST_WORKERS ?= 2
# make demo runs this many notebooks at once (one torch thread each), as their runs allow.
DEMO_JOBS ?= 2

.PHONY: setup test demo prepared lab bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	sh tests/browser_setup.sh || echo "browser_setup: Chromium not installed; the browser tests will skip"
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(PY) -m cpcl_kit demo --out $(OUT) --preset $(PRESET) --jobs $(DEMO_JOBS)

# The prepared run set the notebooks show (benchmark preset, seed 0; resumable); make demo's last
# line gives its time, scaled from benchmarks/results/ssl_gain-benchmark.json.
prepared: $(STAMP)
	$(PY) -m cpcl_kit prepare --jobs 2

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/ssl_gain.py --jobs 2
	$(PY) benchmarks/ablation.py --jobs 2

# One prepared check of the CUDA path (benchmarks/gpu_check.py), with the machine's own Python and
# PyTorch, nothing installed: everything goes to GPU_OUT. GPU_CHECK_ARGS=--cpu-smoke runs it tiny on a CPU.
GPU_OUT ?= gpu-check-out
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(OUT) .pytest_cache
