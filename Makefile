# ringlb — see README.md. Two commands for a fresh Debian 12 machine, as root:
#   make demo    the appliance on the built-in lab topology, ~20 s of traffic
#   make test    every test tier
# Also: make bench (ringlb vs dpdk-testpmd and the lab peers, ≤ 15 min, results in perf/results)
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all setup build test demo bench fuzz lint fmt clean install

all: build

setup:
	bash deploy/setup.sh

build: setup
	cargo build --release --workspace

test: build
	bash tests/run_all.sh

demo: build
	bash deploy/demo.sh

# FUZZ_SECONDS per target (default 300); see fuzz/run.sh.
FUZZ_SECONDS ?= 300
fuzz: setup
	bash fuzz/run.sh $(FUZZ_SECONDS)

# BENCH_ARGS, e.g. BENCH_ARGS="--sessions 1000,1000000 --lab 0"; see ringlb-bench --help.
bench: build
	target/release/ringlb-bench $(BENCH_ARGS)

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	shellcheck -S warning $$(git ls-files '*.sh') .ci/run

# Binaries, systemd units and example configs (existing configs are kept).
PREFIX ?= /usr/local
DESTDIR ?=
install:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/ringlb $(DESTDIR)/lib/systemd/system $(DESTDIR)/etc/ringlb
	install -m 755 target/release/ringlb target/release/ringlb-agent $(DESTDIR)$(PREFIX)/bin/
	install -m 755 deploy/baremetal.sh $(DESTDIR)$(PREFIX)/lib/ringlb/
	install -m 644 deploy/systemd/*.service $(DESTDIR)/lib/systemd/system/
	[ -e $(DESTDIR)/etc/ringlb/ringlb.yaml ] || install -m 644 deploy/lab/dsr.yaml $(DESTDIR)/etc/ringlb/ringlb.yaml
	[ -e $(DESTDIR)/etc/ringlb/agent.yaml ] || install -m 644 deploy/agent.example.yaml $(DESTDIR)/etc/ringlb/agent.yaml
	install -m 644 deploy/bird/bird.conf $(DESTDIR)/etc/ringlb/bird.conf.example
	# A new cluster key (32 random bytes, owner-only); copy it to every member.
	[ -e $(DESTDIR)/etc/ringlb/cluster.key ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $(DESTDIR)/etc/ringlb/cluster.key)

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf fuzz/target
