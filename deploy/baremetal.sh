#!/usr/bin/env bash
# Bare-metal preparation for ringlb (as root):
#   baremetal.sh [--dry-run] hugepages N [2M|1G]   reserve N hugepages (default 2M) and mount hugetlbfs
#   baremetal.sh [--dry-run] bind PCI...           load vfio-pci and bind NICs to it (dpdk-devbind.py)
#   baremetal.sh [--dry-run] bind-file FILE        the same for each PCI address in FILE (# comments allowed)
#   baremetal.sh status                            hugepages and NIC bindings now
# --dry-run prints the commands instead of running them.
set -euo pipefail
DRY=
if [ "${1:-}" = --dry-run ]; then DRY=1; shift; fi
run() { if [ -n "$DRY" ]; then echo "+ $*"; else "$@"; fi; }
write() { if [ -n "$DRY" ]; then echo "+ echo $1 > $2"; else echo "$1" > "$2"; fi; }
die() { echo "baremetal.sh: $*" >&2; exit 1; }
pci_ok() { [[ $1 =~ ^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]]; }

hugepages() {
  local n=${1:?hugepages needs a count} size=${2:-2M} kb dir
  [[ $n =~ ^[0-9]+$ ]] || die "hugepages: '$n' is not a number"
  case $size in
    2M) kb=2048 ;;
    1G) kb=1048576 ;;
    *) die "hugepages: size must be 2M or 1G, not '$size'" ;;
  esac
  write "$n" "/sys/kernel/mm/hugepages/hugepages-${kb}kB/nr_hugepages"
  dir=/dev/hugepages
  [ "$size" = 1G ] && dir=/dev/hugepages1G
  if [ -n "$DRY" ] || ! mountpoint -q "$dir"; then
    run mkdir -p "$dir"
    run mount -t hugetlbfs -o "pagesize=$size" nodev "$dir"
  fi
}

bind() {
  [ $# -gt 0 ] || die "bind: give at least one PCI address"
  local a
  for a in "$@"; do pci_ok "$a" || die "bind: '$a' is not a PCI address (0000:03:00.0)"; done
  run modprobe vfio-pci
  for a in "$@"; do run dpdk-devbind.py --bind=vfio-pci "$a"; done
}

case ${1:-} in
  hugepages) shift; hugepages "$@" ;;
  bind) shift; bind "$@" ;;
  bind-file)
    [ -r "${2:-}" ] || die "bind-file: cannot read '${2:-}'"
    mapfile -t addrs < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' -e '/^$/d' "$2")
    bind "${addrs[@]}" ;;
  status)
    grep -H . /sys/kernel/mm/hugepages/hugepages-*/nr_hugepages
    dpdk-devbind.py --status-dev net || true ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
