# Two entry points: `make demo` (install, then the study end to end on an embedded
# LocalCluster) and `make test`. Each creates or reuses .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.stamp-install
DEMO_OUT ?= demo-out

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch goes in first, pinned to the CPU build by constraints.txt, so that nothing that
# depends on it pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt "torch==2.13.0"
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/porevox demo --out $(DEMO_OUT)
	@echo "report: $(abspath $(DEMO_OUT))/study/report.html"

# The paper-sized checks and the tuning run (marked slow) run with the benchmarks, not in make test.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m pytest -q -m slow
	$(BIN)/porevox bench all --out bench-out

clean:
	rm -rf $(DEMO_OUT) bench-out .pytest_cache
