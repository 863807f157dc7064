# Coffer: two commands on a fresh Debian machine (as root): `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# What running needs, and what only the tests need (real PostgreSQL, nginx, a file manager under Xvfb, shell tools).
APT_PACKAGES := libfuse2 fuse3 libfuse3-dev pkg-config g++ make curl
TEST_APT_PACKAGES := sqlite3 rsync git tar postgresql nginx xvfb pcmanfm xdotool imagemagick tesseract-ocr bc swift swift-proxy swift-account swift-container swift-object memcached
RUN_DIR ?= $(CURDIR)/.run
MOUNT_DIR ?= $(CURDIR)/mnt/Documents
PORT ?= 6770
export COFFER_CONFIG_DIR ?= $(RUN_DIR)/config
export COFFER_DATA_DIR ?= $(RUN_DIR)/data
export COFFER_PASSWORD ?= demo-password

.PHONY: help deps test-deps apt-install build run stop test bench clean

help:
	@echo "make run    install what is missing, start the embedded server, bootstrap a demo organization, mount a workspace"
	@echo "make stop   unmount the demo workspace and stop the demo server"
	@echo "make test   install what is missing and run every test"
	@echo "make bench  benchmarks: crypto, server, and Coffer side by side with gocryptfs/securefs/CryFS/plain/tmpfs (QUICK=1 for a short run)"

# System packages only when missing (apt), npm packages from package-lock.json.
deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)"
	@if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then npm ci --no-audit --no-fund; fi

test-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(TEST_APT_PACKAGES)"

apt-install:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
	fi

# The addons (native/: the libfuse3 binding, the block AEAD): rebuilt when their sources change. If
# they do not build, mounts fall back to fuse-native and block crypto to node:crypto (slower, same
# bytes), so a failure here is a warning, not an error.
ADDONS := native/build/Release/coffer_fuse.node native/build/Release/coffer_crypto.node
build: deps
	@npx tsc -p tsconfig.json
	@if [ -n "$$(for a in $(ADDONS); do [ -f $$a ] || echo missing; find native -maxdepth 1 \( -name '*.cc' -o -name binding.gyp \) -newer $$a; done)" ]; then \
	  npm run --silent build:native || echo "warning: the native addons did not build; mounts will use fuse-native, block crypto node:crypto"; \
	fi

COFFER := node $(CURDIR)/dist/cli/main.js
SERVER := http://127.0.0.1:$(PORT)

# The demo: server in the background (logs in $(RUN_DIR)), organization "demo", user alice, workspace "Documents".
run: build
	@mkdir -p "$(RUN_DIR)" "$(MOUNT_DIR)"
	@if ! curl -sf $(SERVER)/v1/health >/dev/null 2>&1; then \
	  nohup $(COFFER) server --data "$(RUN_DIR)/server" --port $(PORT) > "$(RUN_DIR)/server.log" 2>&1 & echo $$! > "$(RUN_DIR)/server.pid"; \
	  for i in $$(seq 50); do curl -sf $(SERVER)/v1/health >/dev/null 2>&1 && break; sleep 0.2; done; \
	fi
	@if ! ls "$(COFFER_CONFIG_DIR)"/devices/*.device >/dev/null 2>&1; then \
	  token=$$($(COFFER) org create demo --server $(SERVER) --admin-token "$$(cat $(RUN_DIR)/server/admin-token)" | sed -n 's/^bootstrap token: //p'); \
	  $(COFFER) org bootstrap demo --server $(SERVER) --token "$$token" --user alice@demo.example --device laptop && \
	  $(COFFER) workspace create Documents; \
	fi
	@if ! mountpoint -q "$(MOUNT_DIR)"; then \
	  nohup $(COFFER) mount Documents "$(MOUNT_DIR)" > "$(RUN_DIR)/mount.log" 2>&1 & \
	  for i in $$(seq 100); do mountpoint -q "$(MOUNT_DIR)" && break; sleep 0.1; done; \
	fi
	@mountpoint -q "$(MOUNT_DIR)" || { echo "mount failed, see $(RUN_DIR)/mount.log"; tail -5 "$(RUN_DIR)/mount.log"; exit 1; }
	@echo ""
	@echo "Coffer is running. The workspace Documents is mounted at $(MOUNT_DIR)"
	@echo "  try:   cp -r /usr/share/doc/git $(MOUNT_DIR)/ && ls -l $(MOUNT_DIR)"
	@echo "         COFFER_CONFIG_DIR=$(COFFER_CONFIG_DIR) COFFER_DATA_DIR=$(COFFER_DATA_DIR) COFFER_PASSWORD=$(COFFER_PASSWORD) npx coffer status"
	@echo "  logs:  $(RUN_DIR)/server.log, $(RUN_DIR)/mount.log   (password of the demo device: $(COFFER_PASSWORD))"
	@echo "  stop:  make stop"

stop:
	@-$(COFFER) unmount "$(MOUNT_DIR)" 2>/dev/null
	@-if [ -f "$(RUN_DIR)/server.pid" ]; then kill $$(cat "$(RUN_DIR)/server.pid") 2>/dev/null; rm -f "$(RUN_DIR)/server.pid"; fi
	@echo "stopped (data kept in $(RUN_DIR); rm -rf it to start over)"

test: build test-deps
	@npx tsc -p test/tsconfig.json  # tests and benches are type-checked too (tap runs them through tsx, which does not)
	@set -o pipefail; rm -f tap.out; \
	npx tap --reporter=tap test/unit test/integration test/e2e 2>&1 | tee tap.out; rc=$$?; \
	s=$$(grep -E '^# \{ total: ' tap.out | tail -1); \
	pass=$$(echo "$$s" | sed -nE 's/.*pass: ([0-9]+).*/\1/p'); fail=$$(echo "$$s" | sed -nE 's/.*fail: ([0-9]+).*/\1/p'); \
	echo "tests: $${pass:-0} passed, $${fail:-0} failed"; \
	if [ -z "$$s" ] && [ $$rc -eq 0 ]; then rc=1; fi; exit $$rc

bench: build
	@npm run --silent bench:crypto
	@$(MAKE) --no-print-directory test-deps && node --import tsx bench/server.ts
	@bash bench/fs.sh

# Long random-operation verifier (test/e2e/random-ops.test.ts): 100,000 operations against a real
# mount and a model; COFFER_RANDOM_SEED=<seed> replays a seed, COFFER_RANDOM_OPS=<n> changes the count.
.PHONY: soak
# The fault-injection tests run long too (COFFER_SOAK=1: more seeds and rounds; COFFER_FAULT_SEED=<seed>
# replays one, COFFER_FAULT_SEEDS=<n> changes how many): network faults through a proxy, kill -9 of
# the mount and of the server, disk full on both sides.
FAULT_TESTS := test/e2e/faults-network.test.ts test/e2e/crash-consistency.test.ts test/e2e/disk-full.test.ts test/e2e/mount-faults.test.ts
soak: build
	@rc=0; \
	COFFER_RANDOM_OPS=$${COFFER_RANDOM_OPS:-100000} npx tap --reporter=tap --timeout=0 test/e2e/random-ops.test.ts || rc=1; \
	COFFER_SOAK=1 npx tap --reporter=tap --timeout=0 --jobs=1 $(FAULT_TESTS) || rc=1; \
	COFFER_FUZZ_CASES=$${COFFER_FUZZ_CASES:-20000} npx tap --reporter=tap --timeout=0 test/integration/server-fuzz.test.ts || rc=1; \
	exit $$rc

clean:
	rm -rf dist tap.out .tap
