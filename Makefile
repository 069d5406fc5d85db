PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint docs setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,export,serve,docs,lora,parquet,hf,openvino]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vitkit train --config configs/digits.yaml --run.overwrite true

# The precision-sensitive tests run a second time as on a CPU of the other kind: without
# native bf16 where this one has it (or where VITKIT_NATIVE_BF16=1 says so), with it where not.
OTHER_BF16 = $(shell $(BIN)/python -c "from vitkit.precision import native_bf16 as f; print(0 if f('cpu') else 1)")

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
	VITKIT_NATIVE_BF16=$(OTHER_BF16) $(BIN)/python -m pytest -q -m precision
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

lint: $(STAMP)
	$(BIN)/ruff check .

# The documentation site (mkdocs.yml, docs/) into build/site; strict: a broken link, a missing
# page or a docstring reference that does not resolve fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
