# flexeval: `make demo` and `make test` each work alone on a fresh machine (they depend on setup).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

DEMO := demo
MODEL ?= senfu/llava-v1.5-7b-flexattn
DATA_ROOT ?= data
OUT ?= results

.PHONY: setup demo test eval-all lint clean

setup: $(STAMP)

# torch first: the pinned CPU wheel on this disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/flexeval model make-tiny --out $(DEMO)/llava-tiny-flexattn --seed 0
	$(BIN)/flexeval data make-sample --bench vstar --out $(DEMO)/data/vstar --n 6
	$(BIN)/flexeval run --bench vstar --model $(DEMO)/llava-tiny-flexattn --data-dir $(DEMO)/data/vstar --out $(DEMO)/results
	$(BIN)/flexeval report $(DEMO)/results
	# appendix A.2 / A.3: attention pictures, the planted-hot-spot check, GQA grounding per layer (two models)
	$(BIN)/flexeval data make-sample --bench gqa --out $(DEMO)/data/gqa --n 4
	$(BIN)/flexeval attention --model $(DEMO)/llava-tiny-flexattn --bench gqa --data-dir $(DEMO)/data/gqa --limit 2 --layers 0,8,9,11 --out $(DEMO)/results
	$(BIN)/flexeval attention-check --out $(DEMO)/attention-check.png
	$(BIN)/flexeval model make-tiny --out $(DEMO)/llava-tiny-plain --seed 0 --format llava
	$(BIN)/flexeval grounding --model $(DEMO)/llava-tiny-flexattn --data-dir $(DEMO)/data/gqa --out $(DEMO)/grounding --quiet
	$(BIN)/flexeval grounding --model $(DEMO)/llava-tiny-plain --data-dir $(DEMO)/data/gqa --out $(DEMO)/grounding --quiet
	# the browsable report: V* maps of two items (prompt-end row, the one target coverage measures), then the site
	$(BIN)/flexeval attention --model $(DEMO)/llava-tiny-flexattn --bench vstar --data-dir $(DEMO)/data/vstar --limit 2 --layers 8,9,10 --token prompt-end --out $(DEMO)/results
	$(BIN)/flexeval report $(DEMO)/results --html

test: setup
	$(BIN)/python -m pytest

eval-all: setup
	$(BIN)/flexeval run --bench all --model $(MODEL) --data-dir $(DATA_ROOT) --out $(OUT)
	$(BIN)/flexeval report $(OUT)

lint: setup
	$(BIN)/ruff check flexeval benchmarks model tests

clean:
	rm -rf $(DEMO) .pytest_cache
