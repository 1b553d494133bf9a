# Two commands for a new user: `make run` and `make test`. Both set up .venv
# idempotently; the stamp file makes the second call fast.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
CONFIG ?= configs/quickstart.yaml
# Idle OpenMP threads spin by default; on a busy 2-core machine that made one GP likelihood
# step 60x slower. Passive waiting costs nothing when the cores are free.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test install bench clean ui

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	# CPU torch first (a local wheel here; PyTorch's CPU index elsewhere), so
	# that nothing below pulls a CUDA build.
	$(BIN)/python -m pip install -q $(TORCH) || \
	  $(BIN)/python -m pip install -q $(TORCH) --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/xtalforge run $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/round_time.py --controlled --repeats 1

ui: $(STAMP)
	$(BIN)/xtalforge ui

clean:
	rm -rf $(VENV) runs build *.egg-info
