#!/usr/bin/env bash
# The ceiling for ringlb hardware tests: dpdk-testpmd (DPDK 22.11) forwarding
# between the appliance's two NIC ports on the cores ringlb would use, with
# the same queue layout (one RX and one TX queue per forwarding core and
# port, 1024 descriptors). Run it instead of ringlb, under the same traffic;
# ringlb's rate divided by this one is the number to report.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<EOF
usage: ${0##*/} [options] CLIENT_PCI SERVER_PCI

Forwards frames between the appliance's client-side port CLIENT_PCI and its
server-side port SERVER_PCI (the two 'device:' entries of ringlb's YAML) for
--duration seconds: what arrives on one port leaves by the other.

  -c, --cores LIST     the same CPUs as ringlb: control_core first, then the
                       worker_cores (default 0,1: one forwarding core)
  -d, --duration SEC   default 60
      --peer MAC       rewrite the Ethernet addresses as ringlb does (testpmd's
                       mac mode): frames leaving SERVER_PCI get MAC as their
                       destination and that port's own MAC as their source;
                       without it frames pass unchanged (io mode)
      --mbufs N        mbuf pool size (default 131072)
      --log FILE       where testpmd's whole output goes (default under \$TMPDIR or /tmp)
  -n, --dry-run        check the arguments and print the command; forward nothing
  -h, --help
EOF
}

cores=0,1 duration=60 peer='' mbufs=131072 log='' dry=''
args=()
while [ $# -gt 0 ]; do
  case $1 in
    -c | --cores) need_value "$@"; cores=$2; shift ;;
    -d | --duration) need_value "$@"; duration=$2; shift ;;
    --peer) need_value "$@"; peer=$2; shift ;;
    --mbufs) need_value "$@"; mbufs=$2; shift ;;
    --log) need_value "$@"; log=$2; shift ;;
    -n | --dry-run) dry=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) bad_usage "unknown option '$1'" ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ ${#args[@]} -eq 2 ] || { usage >&2; exit 2; }

client=$(check_pci "${args[0]}" "$dry")
server=$(check_pci "${args[1]}" "$dry")
[ "$client" != "$server" ] || bad_usage "CLIENT_PCI and SERVER_PCI are the same port"
check_run_options reference

fw=(--forward-mode=io)
if [ -n "$peer" ]; then
  check_mac "$peer"
  # DPDK numbers PCI ports in bus order, not in -a order.
  if [[ $server < $client ]]; then sport=0; else sport=1; fi
  fw=(--forward-mode=mac "--eth-peer=$sport,$peer")
fi

[ -n "$dry" ] || check_hugepages "$(mbufs_mb "$mbufs")"
run_testpmd "$dry" "$duration" "$log" -- \
  -l "$cores" -a "$client" -a "$server" --in-memory --file-prefix=ringlb-perf-ref -- \
  "${fw[@]}" --nb-cores="$fwd" --rxq="$fwd" --txq="$fwd" \
  --rxd=1024 --txd=1024 "--total-num-mbufs=$mbufs" --stats-period=1
