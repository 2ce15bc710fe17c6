# Everything a fresh machine needs: `make demo` (install, export, verify, benchmark) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgevit-installed
MODEL  ?= s2aformer-t

.PHONY: install demo test test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU torch wheel first and pinned: anything else would pull gigabytes of CUDA packages
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgevit export $(MODEL) --to onnx --output artifacts/$(MODEL).onnx --force  # --force: replaces only a previous edgevit export
	$(BIN)/edgevit verify $(MODEL) artifacts/$(MODEL).onnx
	$(BIN)/edgevit bench --device cpu --models $(MODEL) --runtimes torch,onnxruntime,openvino --json artifacts/bench-$(MODEL).json

# Two workers, one per core: most of the suite's time is single-threaded export tracing, so this halves the
# wall time; --dist loadfile keeps each file's module fixtures (one export shared by its tests) in one worker.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile --durations=25

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check edgevit tests

clean:
	rm -rf artifacts .pytest_cache
