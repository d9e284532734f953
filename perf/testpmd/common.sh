# shellcheck shell=bash
# Functions shared by generate.sh, sink.sh and reference.sh (sourced, not run).
# Everything is passed as arguments; no globals cross the file boundary.

die() { echo "${0##*/}: $*" >&2; exit 1; }
need_value() { [ $# -ge 2 ] || bad_usage "option $1 needs a value"; }
bad_usage() { echo "${0##*/}: $*" >&2; echo "run '${0##*/} --help' for usage" >&2; exit 2; }

# Prints the PCI address with its domain (0000:03:00.0). Outside a dry run
# the device must exist and be usable by DPDK: bound to vfio-pci/uio, or a
# Mellanox port (bifurcated driver) that does not carry the default route.
check_pci() {
  local a=$1 dry=$2 drv dev
  [[ $a =~ ^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]] \
    || bad_usage "'$a' is not a PCI address (like 0000:03:00.0); list NICs with: dpdk-devbind.py --status-dev net"
  [[ $a == ????:* ]] || a=0000:$a
  a=${a,,}
  if [ -z "$dry" ]; then
    [ -e "/sys/bus/pci/devices/$a" ] || die "no PCI device $a on this machine (dpdk-devbind.py --status-dev net)"
    drv=$(basename "$(readlink "/sys/bus/pci/devices/$a/driver" 2>/dev/null || echo none)")
    case $drv in
      vfio-pci | uio_pci_generic | igb_uio) ;;
      mlx4_core | mlx5_core)
        for dev in /sys/bus/pci/devices/"$a"/net/*; do
          [ -e "$dev" ] || continue
          if ip route show default 2>/dev/null | grep -qw "dev ${dev##*/}"; then
            die "$a is ${dev##*/}, which carries this machine's default route; refusing to send test traffic on it"
          fi
        done ;;
      *) die "$a is bound to '$drv'; bind it for DPDK first: deploy/baremetal.sh bind $a" ;;
    esac
  fi
  echo "$a"
}

check_mac() {
  [[ $1 =~ ^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$ ]] || bad_usage "'$1' is not a MAC address (like 02:00:00:00:00:01)"
}

check_uint() { # NAME VALUE MIN
  if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3)); then bad_usage "$1 must be a whole number >= $3, not '$2'"; fi
}

# EAL core list (0-3,8,10-11) -> number of cores in it; at least 2 (main + one forwarding).
count_cores() {
  local list=$1 part lo hi n=0
  local -a parts
  [[ $list =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || bad_usage "cores '$list' is not a core list like 0-3 or 0,2,4"
  IFS=, read -ra parts <<<"$list"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      lo=$((10#${part%-*})) hi=$((10#${part#*-}))
      ((hi >= lo)) || bad_usage "core range '$part' runs backwards"
      n=$((n + hi - lo + 1))
    else
      n=$((n + 1))
    fi
  done
  ((n >= 2)) || bad_usage "cores '$list': give at least two (testpmd's main lcore and one forwarding core)"
  echo "$n"
}

# Free hugepage memory in MiB over all page sizes.
hugepages_free_mb() {
  local d n kb total=0
  for d in /sys/kernel/mm/hugepages/hugepages-*kB; do
    [ -r "$d/free_hugepages" ] || continue
    n=$(<"$d/free_hugepages")
    kb=${d##*hugepages-}
    kb=${kb%kB}
    total=$((total + n * kb / 1024))
  done
  echo "$total"
}

check_hugepages() { # NEEDED_MB
  local free
  free=$(hugepages_free_mb)
  if ((free < $1)); then
    die "needs ${1} MiB of free hugepages, ${free} MiB are free. As root: deploy/baremetal.sh hugepages 1024
  (or: echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages; mount -t hugetlbfs nodev /dev/hugepages)"
  fi
  grep -q ' hugetlbfs ' /proc/mounts || die "no hugetlbfs is mounted: mount -t hugetlbfs nodev /dev/hugepages (as root)"
}

# Hugepage MiB for a pool of N mbufs of testpmd's default 2176-byte data room
# (about 2.5 KiB each with headers) plus room for rings and the EAL.
# The checks every script makes on its shared options, and what follows
# from them: sets `fwd` (forwarding cores: all but the main lcore) and
# `log` (default: a timestamped file named after the script's ROLE).
# It reads and sets the calling script's option variables (hence SC2154/SC2034).
# shellcheck disable=SC2154,SC2034
check_run_options() { # ROLE
  local ncores
  ncores=$(count_cores "$cores")
  check_uint duration "$duration" 1
  check_uint mbufs "$mbufs" 8192
  fwd=$((ncores - 1))
  log=${log:-${TMPDIR:-/tmp}/ringlb-testpmd-$1-$(date +%Y%m%d-%H%M%S).log}
}

mbufs_mb() { echo $(($1 * 5 / 2 / 1024 + 128)); }

# testpmd's periodic display -> one line per port and period:
#   t=3s port 0 rx_pps=14880952 tx_pps=0 rx_missed=0
# Reads testpmd's output on stdin (ANSI screen codes already stripped).
per_second() {
  local period=$1 line port='?' missed=0 rx=0
  local -A seen=()
  while IFS= read -r line; do
    if [[ $line =~ NIC\ statistics\ for\ port\ ([0-9]+) ]]; then
      port=${BASH_REMATCH[1]}
    elif [[ $line =~ RX-missed:\ *([0-9]+) ]]; then
      missed=${BASH_REMATCH[1]}
    elif [[ $line =~ Rx-pps:\ *([0-9]+) ]]; then
      rx=${BASH_REMATCH[1]}
    elif [[ $line =~ Tx-pps:\ *([0-9]+) ]]; then
      seen[$port]=$((${seen[$port]:-0} + 1))
      echo "t=$((seen[$port] * period))s port $port rx_pps=$rx tx_pps=${BASH_REMATCH[1]} rx_missed=$missed"
    fi
  done
}

# run_testpmd DRY DURATION LOG -- ARGS...
# Runs dpdk-testpmd ARGS for DURATION seconds (then SIGINT, then SIGKILL 15 s
# later if it hangs), keeps its whole output in LOG, shows one line per port
# and second while it runs and testpmd's final forward statistics at the end.
# With DRY non-empty it only prints the command.
run_testpmd() {
  local dry=$1 duration=$2 log=$3 rc
  [ "${4:-}" = -- ] || die "run_testpmd: internal error, expected -- before testpmd's arguments"
  shift 4
  if [ -n "$dry" ]; then
    echo "would run: timeout -s INT -k 15 $duration dpdk-testpmd $*"
    return 0
  fi
  command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found: apt-get install dpdk (Debian 12: DPDK 22.11)"
  [ "$(id -u)" = 0 ] || die "run as root (DPDK needs the NICs and hugepages)"
  echo "dpdk-testpmd $* (for ${duration}s; full output in $log)"
  set +e
  timeout -s INT -k 15 "$duration" stdbuf -oL dpdk-testpmd "$@" 2>&1 \
    | tee "$log" | sed -u 's/\x1b\[[0-9;]*[A-Za-z]//g' | per_second 1
  rc=${PIPESTATUS[0]}
  set -e
  if grep -q 'Telling cores to stop' "$log"; then
    echo "---- final statistics ----"
    sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' -n -e '/Telling cores to stop/,$p' "$log"
  fi
  # 124: stopped by the timeout, the normal end of a bounded run.
  case $rc in
    0 | 124) return 0 ;;
    *) tail -n 15 "$log" >&2; die "dpdk-testpmd failed (exit $rc); whole output in $log" ;;
  esac
}
