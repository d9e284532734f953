#!/usr/bin/env bash
# Traffic sink for ringlb hardware tests: dpdk-testpmd (DPDK 22.11) in rxonly
# mode on the NIC that faces the appliance's server side, printing the
# received packets per second for a fixed time, then testpmd's totals.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<EOF
usage: ${0##*/} [options] PCI

Receives and counts everything arriving on the DPDK port PCI (e.g.
0000:04:00.0), the port that stands in for the back-end servers, for
--duration seconds. The port is promiscuous; give its MAC to ringlb as the
servers' static 'mac:' (a sink does not answer ARP).

  -c, --cores LIST     EAL cores; the first is testpmd's main lcore, the others
                       receive, one RX queue each, spread by RSS (default 0,1)
  -d, --duration SEC   default 30 (start the sink before the generator)
      --mbufs N        mbuf pool size (default 131072)
      --log FILE       where testpmd's whole output goes (default under \$TMPDIR or /tmp)
  -n, --dry-run        check the arguments and print the command; receive nothing
  -h, --help

Prints one line per second: t=Ns port 0 rx_pps=... tx_pps=0 rx_missed=...
(rx_missed counts frames the NIC dropped because the sink was too slow: if it
is not 0, give the sink more cores before trusting the rates).
EOF
}

cores=0,1 duration=30 mbufs=131072 log='' dry=''
args=()
while [ $# -gt 0 ]; do
  case $1 in
    -c | --cores) need_value "$@"; cores=$2; shift ;;
    -d | --duration) need_value "$@"; duration=$2; shift ;;
    --mbufs) need_value "$@"; mbufs=$2; shift ;;
    --log) need_value "$@"; log=$2; shift ;;
    -n | --dry-run) dry=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) bad_usage "unknown option '$1'" ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ ${#args[@]} -eq 1 ] || { usage >&2; exit 2; }

pci=$(check_pci "${args[0]}" "$dry")
check_run_options sink

[ -n "$dry" ] || check_hugepages "$(mbufs_mb "$mbufs")"
run_testpmd "$dry" "$duration" "$log" -- \
  -l "$cores" -a "$pci" --in-memory --file-prefix=ringlb-perf-sink -- \
  --forward-mode=rxonly --nb-cores="$fwd" --rxq="$fwd" --txq="$fwd" \
  --rxd=1024 --txd=1024 "--total-num-mbufs=$mbufs" --stats-period=1
