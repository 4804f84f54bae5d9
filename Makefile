# Sluice — make targets. `make run` and `make test` are the two commands a
# newcomer needs; both work on a fresh Debian machine with Go installed
# (.ci/run installs Go's toolchain when it is missing).
GO      ?= go
BIN     := bin/sluice
BENCH   := bin/sluice-bench
CONFIG  ?= pipeline.example.lua
PKGS    := ./...
# `sluice version` reports these (see cmd/sluice/version.go); override for
# a release: make build VERSION=v1.2.0.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: all build run test test-short test-scripts bench bench-postfix lint fmt vet clean deps proto proto-tools

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/sluice
	$(GO) build -o $(BENCH) ./cmd/sluice-bench

# Runs the relay with the example pipeline: SMTP on 127.0.0.1:2525, spool in
# ./var/spool, events in ./var/events.jsonl. No external service needed.
run: build
	mkdir -p var
	./$(BIN) serve -c $(CONFIG)

# Installs test prerequisites (Debian's redis-server for the cluster tests,
# Debian's python3 gRPC for the Python plugin example, Debian's python3-dkim
# for the DKIM interop tests), then runs every
# test with the race detector.
deps:
	$(GO) mod download
	@# Cluster tests (token revocation, rate limits) start a real redis-server.
	@command -v redis-server >/dev/null 2>&1 || \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing redis-server (cluster tests)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) || \
	      echo "deps: WARNING: apt-get install redis-server failed: the cluster tests will be SKIPPED"; \
	  else \
	    echo "deps: WARNING: redis-server is missing and we cannot apt-get install it (not root, or no apt): the cluster tests will be SKIPPED"; \
	  fi
	@# The Python example plugin's tests need Debian's gRPC for /usr/bin/python3:
	@# installed here when we are root with apt-get, else its tests skip.
	@/usr/bin/python3 -c 'import grpc, grpc_tools, google.protobuf' 2>/dev/null || \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing python3-grpcio python3-grpc-tools python3-protobuf (examples/plugins/scorer-py)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-grpcio python3-grpc-tools python3-protobuf >/dev/null) || \
	      echo "deps: WARNING: apt-get install failed: the Python plugin example's tests will be SKIPPED"; \
	  else \
	    echo "deps: WARNING: /usr/bin/python3 lacks grpc and we cannot apt-get install it (not root, or no apt): the Python plugin example's tests will be SKIPPED"; \
	  fi

	@# DKIM tests check our signatures with an independent verifier: Debian's
	@# python3-dkim (dkimpy) for /usr/bin/python3.
	@/usr/bin/python3 -c 'import dkim' 2>/dev/null || \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing python3-dkim (DKIM interop tests)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-dkim >/dev/null) || \
	      echo "deps: WARNING: apt-get install python3-dkim failed: the DKIM interop tests will be SKIPPED"; \
	  else \
	    echo "deps: WARNING: /usr/bin/python3 lacks dkim and we cannot apt-get install it (not root, or no apt): the DKIM interop tests will be SKIPPED"; \
	  fi

test: deps build
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	# the carried go-smtp and gopher-lua copies are modules of their own
	# (see their READMEs)
	cd internal/third_party/go-smtp && $(GO) test -count=1 ./...
	cd internal/third_party/gopher-lua && $(GO) test -count=1 .

# The Lua rule tests of the shipped scripts (also run by `make test`,
# through go test ./scripts).
test-scripts: build
	./$(BIN) test-scripts scripts

test-short: build
	$(GO) test -short -count=1 $(PKGS)

# End-to-end relay benchmark: load generator -> sluice (Lua stage, fsync) ->
# sink, all on loopback. See BENCHMARKS.md. First Sluice side by side with
# Postfix through ../shared/bench (when Postfix is installed and this runs as
# root; otherwise it says so), then Sluice alone with bin/sluice-bench.
bench: build
	./examples/bench/sidebyside.sh
	./examples/bench/run.sh

# Only the side-by-side run against Postfix (SIDE_SCENARIOS, SIDE_REPS).
bench-postfix: build
	./examples/bench/sidebyside.sh

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin var

# The plugin protocol's generated Go code (committed; .ci/check-proto fails
# when it is stale). protoc comes from Debian's protobuf-compiler; the Go
# generators are pinned here.
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
PROTOC_GEN_VTPROTO := github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@v0.6.1-0.20240319094008-0393e58bdf10

proto-tools:
	$(GO) install $(PROTOC_GEN_GO)
	$(GO) install $(PROTOC_GEN_GO_GRPC)
	$(GO) install $(PROTOC_GEN_VTPROTO)

proto: proto-tools
	plugins/proto/gen.sh
