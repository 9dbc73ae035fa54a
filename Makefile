# The two commands of README.md: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UV_INSTALL = $(if $(PIP_CERT),SSL_CERT_FILE=$(PIP_CERT)) $(BIN)/uv pip install --quiet --python $(BIN)/python \
	$(if $(PIP_INDEX_URL),--index-url $(PIP_INDEX_URL)) $(foreach u,$(PIP_EXTRA_INDEX_URL),--extra-index-url $(u)) \
	$(foreach f,$(PIP_FIND_LINKS),$(if $(or $(findstring ://,$(f)),$(wildcard $(f))),--find-links $(f))) \
	-c constraints.txt

.PHONY: demo test lint docs clean

# Python's default: a module's bytecode is cached (in __pycache__) by its first import, also where
# PYTHONDONTWRITEBYTECODE is set; otherwise every process would compile torch, Prefect and Ax
# from source again (the suite starts some 300). The set-up imports what the commands, the
# Prefect server and the test workers import, so that it is written once, before they start
# (byte-compiling the whole venv instead costs twice the CPU: most of it is never imported).
unexport PYTHONDONTWRITEBYTECODE
WARM = import logging; logging.disable(logging.INFO); import ax.api.client, hypothesis, matplotlib.figure, plotly.graph_objects, prefect.main, prefect.server.api.server, pytest, xdist, flows.cli.main, flows.prefect.flow, flows.prefect.service, devices, simulators, storage

# uv installs the same pins pip would, in seconds rather than ~30 s (pip unpacks torch on one
# core). It reads no pip configuration, so pip's variables for the index, local wheels (a
# CPU-only torch, say) and certificates are passed on (UV_INSTALL above); a local find-links
# directory that does not exist is left out, as pip ignores it (uv would stop).
# torch and BoTorch come first: BoTorch compiles its C++ kernel of qLogEHVI (multi-objective Ax
# campaigns) on first use, ~30 s of CPU, cached in ~/.cache/torch_extensions. It is built here,
# not mid-campaign or mid-suite, while the rest is installed and imported (WARM) on the other core.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt uv
	$(UV_INSTALL) torch botorch
	$(BIN)/python -c "from botorch.acquisition.multi_objective.logei import _try_load_fused_kernel as build; build()" & \
	$(UV_INSTALL) -e '.[test]' && \
	$(BIN)/python -c "$(WARM)" && wait $$!
	touch $(STAMP)

# A real Branin campaign, `branin-demo` (README's next commands name it), on the embedded broker
# and database, two simulated instruments. Again: continues it while unfinished, refuses it once
# finished; `make demo DEMO=branin-demo-2` runs another.
DEMO ?= branin-demo
demo: $(STAMP)
	$(BIN)/closedloop run campaigns/examples/branin.yaml --campaign-id $(DEMO)

# Layer contracts, then the whole test suite (needs Mosquitto: `apt-get install mosquitto mosquitto-clients`).
test: $(STAMP)
	$(BIN)/lint-imports
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
