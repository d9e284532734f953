#!/usr/bin/env bash
# Installs what ringlb needs to build, test and run its lab on Debian 12
# (as root), and reserves hugepages. Idempotent: skips what is present.
set -euo pipefail
PKGS=(dpdk dpdk-dev libdpdk-dev pkg-config clang libclang-dev build-essential
      nginx-light wrk apache2-utils curl iproute2 ethtool procps python3 shellcheck
      haproxy nftables python3-matplotlib valgrind hping3 prometheus jq bird2)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# A system nginx started by the package is not needed (labs run their own).
systemctl disable --now nginx >/dev/null 2>&1 || true
# Same for haproxy (perf/lab_compare.sh runs its own, with its own config),
# only where systemd is actually running.
if [ -d /run/systemd/system ]; then systemctl disable --now haproxy >/dev/null 2>&1 || true; fi
# And Prometheus (tests start their own, scraping the lab's appliance), and
# BIRD (the BGP lab runs its own in each namespace).
if [ -d /run/systemd/system ]; then systemctl disable --now prometheus prometheus-node-exporter bird >/dev/null 2>&1 || true; fi
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "setup: no Rust toolchain found (cargo); install rustup's stable toolchain" >&2
  exit 1
fi
# Hugepages for the lab and demo (the vdev tests run without them).
if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 256 ]; then echo 256 > /proc/sys/vm/nr_hugepages; fi
mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages; }
echo "setup: ok ($(pkg-config --modversion libdpdk 2>/dev/null || echo 'no libdpdk?'), hugepages $(cat /proc/sys/vm/nr_hugepages))"
