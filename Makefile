# The README's two commands: `make demo` and `make test`.  Both install what they need
# first (a .venv with the package and its dev extras, and GLPK's glpsol); idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    := out

.PHONY: install demo test fuzz bench bench-compile bench-sim bench-sweep contract clean

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

# Two fuzzers.  Property fuzz: 500 random models on random hardware, compiled and
# simulated; prints "500 graphs tried, N violations" (reproducers in /tmp/fuzz-repro).
# Flow fuzz: 1,000 mutants of the bundled models' flows, each rejected on one located
# line or accepted and rule-abiding by an independent checker; prints its counts.
# FUZZ_SEED=n varies both.  Then the DP against exhaustive search on 16 random graphs
# of each shape (make test tries 4).
FUZZ_GRAPHS ?= 500
FUZZ_FLOWS ?= 1000
FUZZ_SEED ?= 0
fuzz: install
	CMSWITCH_FUZZ_EXAMPLES=$(FUZZ_GRAPHS) CMSWITCH_FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/pytest -q -p no:cacheprovider tests/test_fuzz.py -k keep_invariants
	CMSWITCH_FLOW_FUZZ=$(FUZZ_FLOWS) CMSWITCH_FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/pytest -q -p no:cacheprovider tests/test_flow_fuzz.py -k mutants
	CMSWITCH_DP_SEEDS=16 $(BIN)/pytest -q -p no:cacheprovider tests/test_segment_dp.py -k exhaustive

# The evaluation table (DESIGN.md §7): every model under every strategy, simulated;
# JSON and charts into out/bench.  Measured 11 min with 2 strategies on the loaded
# 2-core machine (LLaMA2-7B and OPT-13B dominate); time grows with the strategy count.
bench: install
	@mkdir -p $(OUT)/bench
	$(BIN)/cmswitch bench --decode --json $(OUT)/bench/bench.json --plot $(OUT)/bench

# Compile time and MIP solve counts, GLPK vs HiGHS (a printed table; takes a few minutes).
bench-compile: install
	$(BIN)/python -m cmswitch.bench.compile_time

# Simulator and flow-parser speed on the LLaMA2-7B flow (a printed table; about a minute).
bench-sim: install
	$(BIN)/python -m cmswitch.bench.sim_speed

# Sweep wall time: 12 hardware points on one worker vs one per core (a printed table; ~2 min).
bench-sweep: install
	$(BIN)/python -m cmswitch.bench.sweep_speed

contract: install
	../shared/checks/contract

clean:
	rm -rf $(OUT) filecheck/**/Output .pytest_cache
