# ringlb — see README.md. Two commands for a fresh Debian 12 machine, as root:
#   make demo    the appliance on the built-in lab topology, ~20 s of traffic
#   make test    every test tier
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all setup build test demo lint fmt clean

all: build

setup:
	bash deploy/setup.sh

build: setup
	cargo build --release --workspace

test: build
	bash tests/run_all.sh

demo: build
	bash deploy/demo.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
