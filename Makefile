# The README's two commands: `make demo` and `make test`.  Both install what they need
# first (a .venv with the package and its dev extras, and GLPK's glpsol); idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    := out

.PHONY: install demo test bench-compile contract clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)
	@scripts/ensure-glpk.sh $(VENV)

demo: install
	@mkdir -p $(OUT)
	$(BIN)/cmswitch compile models/resnet18.onnx -o $(OUT)/resnet18.cmsasm --json $(OUT)/resnet18.json --summary
	$(BIN)/cmswitch-sim $(OUT)/resnet18.cmsasm
	$(BIN)/cmswitch compile models/bert_base.onnx -o $(OUT)/bert_base.cmsasm --json $(OUT)/bert_base.json --summary
	$(BIN)/cmswitch-sim $(OUT)/bert_base.cmsasm

test: install
	$(BIN)/pytest -q
	$(BIN)/lit -q filecheck

# Compile time and MIP solve counts, GLPK vs HiGHS (a printed table; takes a few minutes).
bench-compile: install
	$(BIN)/python -m cmswitch.bench.compile_time

contract: install
	../shared/checks/contract

clean:
	rm -rf $(OUT) filecheck/**/Output .pytest_cache
