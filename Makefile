# The two commands of README.md: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e '.[test]'
	# BoTorch compiles its C++ kernel of qLogEHVI (multi-objective Ax campaigns) on first use,
	# ~30 s of CPU (cached in ~/.cache/torch_extensions): once here, not mid-campaign or mid-suite;
	# meanwhile the venv is byte-compiled on every core (pip compiles one file at a time: ~25 s
	# longer on two cores), but for the packages' own test suites, which nothing here imports
	# (torch's one Python-3.12-only test module among them: pip leaves that one out too).
	$(BIN)/python -c "from botorch.acquisition.multi_objective.logei import _try_load_fused_kernel as build; build()" & \
	$(BIN)/python -m compileall -q -j 0 -x '(/tests?/|py312_intrinsics)' $(VENV)/lib && wait $$!
	touch $(STAMP)

# A real Branin campaign, `branin-demo` (README's next commands name it), on the embedded broker
# and database, two simulated instruments. Again: continues it while unfinished, refuses it once
# finished; `make demo DEMO=branin-demo-2` runs another.
DEMO ?= branin-demo
demo: $(STAMP)
	$(BIN)/closedloop run campaigns/examples/branin.yaml --campaign-id $(DEMO)

# Layer contracts, then the whole test suite (needs Mosquitto: `apt-get install mosquitto mosquitto-clients`).
# Our modules are byte-compiled first: the suite starts some 300 `closedloop` processes, and
# with PYTHONDONTWRITEBYTECODE set each would compile them from source.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m compileall -q campaigns devices flows optimizer simulators storage
	$(BIN)/python -m pytest

# The layer contracts, and the generated documents (docs/asyncapi.yaml, docs/events.schema.json)
# up to date with the models; `make test` runs both too.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python docs/generate.py --check

# Regenerate docs/asyncapi.yaml and docs/events.schema.json from the models.
docs: $(STAMP)
	$(BIN)/python docs/generate.py

# The venv, and the home earlier versions kept here; the campaigns in ~/.local/share/closedloop stay.
clean:
	rm -rf $(VENV) .closedloop .pytest_cache
