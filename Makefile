# Two commands do all the set-up on a fresh machine (Python 3.10+ and the package registries):
#   make run    generate text with the CLI on the embedded model (creates .venv first)
#   make test   run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The kit's small trained model; until it exists, an untrained random one made on the spot.
MODEL  ?= $(if $(wildcard models/dgemma-tiny/config.json),models/dgemma-tiny,models/dgemma-random)
PROMPT ?= The sky is blue because
ARGS   ?=

.PHONY: setup test run clean

setup: $(STAMP)

# A GPU image that already has a CUDA build of torch (e.g. the vLLM image) keeps it: the venv
# sees the system packages. Elsewhere the venv gets torch 2.13.0, the CPU build our CI holds.
$(STAMP): pyproject.toml Makefile
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
		echo "setup: reusing the system's CUDA torch"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
		$(BIN)/pip install -q --upgrade pip; \
		$(BIN)/pip install -q torch==2.13.0; \
	fi
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

models/dgemma-random/config.json: | $(STAMP)
	$(BIN)/python -m dgemma_helpers make-random models/dgemma-random --preset test --canvas-length 32

run: $(STAMP) $(if $(filter models/dgemma-random,$(MODEL)),models/dgemma-random/config.json)
	$(BIN)/python -m dgemma_helpers generate --model $(MODEL) --prompt "$(PROMPT)" $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) models/dgemma-random .pytest_cache
