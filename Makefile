# berth — build, test, demo. Run as root for demo and the netns tests.
GO       ?= go
BIN      ?= bin
DESTDIR  ?=
PREFIX   ?= /opt/cni/bin
BINDIR   ?= /usr/local/bin
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/berth-cni/berth/pkg/buildinfo.Version=$(VERSION)
PLUGINS  := bridge null portmap macvlan overlay
UPSTREAM := ipam/host-local ipam/static ipam/dhcp main/loopback
UPMOD    := github.com/containernetworking/plugins/plugins

.PHONY: all build install demo test test-unit test-vm fuzz bench clean clean-vm

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./plugins/,$(PLUGINS))
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/ $(addprefix $(UPMOD)/,$(UPSTREAM))
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/berth ./cmd/berth
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/berth-overlayd ./cmd/berth-overlayd

install: build
	install -d $(DESTDIR)$(PREFIX)
	install -m 0755 $(filter-out $(BIN)/berth $(BIN)/berth-overlayd,$(wildcard $(BIN)/*)) $(DESTDIR)$(PREFIX)/
	install -D -m 0755 $(BIN)/berth $(DESTDIR)$(BINDIR)/berth
	install -D -m 0755 $(BIN)/berth-overlayd $(DESTDIR)$(BINDIR)/berth-overlayd

demo: build
	$(GO) run ./cmd/berth-demo -bin $(BIN)

# Every test, root ones included (run as root; CI does), then the VM layer.
# BERTH_FUZZTIME bounds each fuzz target's run.
test: build
	$(GO) vet ./...
	$(GO) test -count=1 ./...
	$(MAKE) fuzz
	$(MAKE) test-vm

# The tests whose body calls lab.RequireKernel (a kernel feature this
# machine may lack), inside a VM booted from Debian's stock kernel under
# qemu; the kernel and busybox-static are fetched with apt-get download into
# .cache/vm. Needs qemu-system-x86, xz-utils and apt (README, Tests).
# VMFLAGS narrows or tunes the run: -pkg plugins/bridge, -run TestVlan,
# -list, -accel kvm, -sh '…' (see go run ./internal/vm/testvm -h).
VMFLAGS ?=
test-vm: build
	$(GO) run ./internal/vm/testvm -go $(GO) -bin $(BIN) $(VMFLAGS)

test-unit:
	$(GO) test -count=1 ./pkg/...

# Go 1.26's fuzz coordinator can report "context deadline exceeded" as a
# failure when -fuzztime runs out mid-execution (golang/go#75804, fixed in
# 1.27): such a run, with no failing input written, is retried once; any
# other failure fails.
FUZZTIME ?= 10s
fuzz:
	@for p in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$p | grep '^Fuzz'); do \
	    echo "fuzz $$p $$f"; \
	    for try in 1 2; do \
	      if $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$p > fuzz.log 2>&1; then cat fuzz.log; break; fi; \
	      cat fuzz.log; \
	      if [ $$try = 1 ] && grep -q 'context deadline exceeded' fuzz.log && ! grep -q 'Failing input written' fuzz.log; then \
	        echo "fuzz: $$f hit the -fuzztime deadline race (golang/go#75804), retrying once"; continue; fi; \
	      rm -f fuzz.log; exit 1; \
	    done; \
	  done; \
	done; rm -f fuzz.log

bench: build
	./bench/run.sh

clean:
	rm -rf $(BIN)

clean-vm:
	rm -rf .cache/vm
