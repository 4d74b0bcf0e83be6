# Set-up and the two everyday commands: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint baseline clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch and torchvision first, at the versions pyproject.toml pins, so pip takes
	# the matching pair in one resolution.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Fine-tune three candidates from the stand-in baseline, then gate them and write
# reports/demo.html. A rejected candidate is a result, not an error: the target fails
# only when training or the gate itself breaks (pytest exit codes above 1).
# Embeddings are cached in .pytest_cache, so a second demo encodes only the models
# whose weights changed.
demo: $(STAMP)
	$(BIN)/modelqa-train --config trainer/recipes/shoelace.yaml --out runs/demo
	set --; for ckpt in runs/demo/epoch_*.pt; do set -- "$$@" --model "$$ckpt"; done; \
	$(BIN)/python -m pytest suites/shoelace "$$@" --html reports/demo.html \
		--self-contained-html; \
	status=$$?; if [ $$status -gt 1 ]; then exit $$status; fi

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check pytest_modelqa trainer tests
	$(BIN)/ruff format --check pytest_modelqa trainer tests

# Rebuild the bundled stand-in baseline from its seed (about 10 minutes on 2 cores).
baseline: $(STAMP)
	$(BIN)/modelqa-train --config trainer/recipes/standin.yaml --out runs/standin
	$(BIN)/python -m trainer.export runs/standin fixtures/baseline/standin.pt \
		--dtype float16 --role baseline

clean:
	rm -rf runs reports .pytest_cache
