#!/usr/bin/env bash
# Traffic generator for ringlb hardware tests: dpdk-testpmd (DPDK 22.11)
# sending from one NIC port to the appliance's client-side port for a fixed
# time, printing per-second rates and testpmd's totals.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<EOF
usage: ${0##*/} [options] PCI APPLIANCE_MAC

Sends frames out of the DPDK port PCI (e.g. 0000:03:00.0) to APPLIANCE_MAC,
the MAC of the appliance's client-side port, for --duration seconds.

  -m, --mode MODE      txonly (default): testpmd builds IPv4/UDP frames itself;
                       pcap: replays --pcap FILE in a loop (net_pcap vdev,
                       infinite_rx), rewriting the Ethernet addresses
  -f, --pcap FILE      frames to replay in pcap mode (IPv4 TCP/UDP to the VIP,
                       at most 1518 bytes each)
  -c, --cores LIST     EAL cores; the first is testpmd's main lcore, the others
                       transmit (txonly: one TX queue each; pcap: at most 2 used).
                       Default 0,1
  -d, --duration SEC   default 30
  -s, --size BYTES     txonly frame size on the wire incl. FCS, 64..1518 (default 64)
      --src IP         txonly source address (default 198.18.0.100)
      --dst IP         txonly destination, the VIP (default 198.18.100.1)
      --udp SPORT,DPORT  txonly UDP ports (default 1024,80)
      --mbufs N        mbuf pool size (default 131072); pcap mode keeps the whole
                       file in mbufs, so give at least its packet count + 16384
      --log FILE       where testpmd's whole output goes (default under \$TMPDIR or /tmp)
  -n, --dry-run        check the arguments and print the command; send nothing
  -h, --help

txonly sends UDP only, so ringlb needs a 'protocol: udp' service on the VIP and
port given by --udp (see perf/testpmd/README.md). With --txonly-multi-flow
DPDK 22.11 varies the source address over a few dozen values per core: a
small-flow test. For many flows replay a pcap, or use perf/trex/.
EOF
}

mode=txonly pcap='' cores=0,1 duration=30 size=64 src=198.18.0.100 dst=198.18.100.1 udp=1024,80
mbufs=131072 log='' dry=''
args=()
while [ $# -gt 0 ]; do
  case $1 in
    -m | --mode) need_value "$@"; mode=$2; shift ;;
    -f | --pcap) need_value "$@"; pcap=$2; shift ;;
    -c | --cores) need_value "$@"; cores=$2; shift ;;
    -d | --duration) need_value "$@"; duration=$2; shift ;;
    -s | --size) need_value "$@"; size=$2; shift ;;
    --src) need_value "$@"; src=$2; shift ;;
    --dst) need_value "$@"; dst=$2; shift ;;
    --udp) need_value "$@"; udp=$2; shift ;;
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

pci=$(check_pci "${args[0]}" "$dry")
mac=${args[1]}
check_mac "$mac"
check_run_options generate
eal=(-l "$cores" -a "$pci" --in-memory --file-prefix=ringlb-perf-gen)
common=(--rxd=1024 --txd=1024 "--total-num-mbufs=$mbufs" --stats-period=1)

case $mode in
  txonly)
    ip='^([0-9]{1,3}\.){3}[0-9]{1,3}$'
    [[ $src =~ $ip && $dst =~ $ip ]] || bad_usage "--src/--dst must be IPv4 addresses"
    [[ $udp =~ ^[0-9]{1,5},[0-9]{1,5}$ ]] || bad_usage "--udp must be SPORT,DPORT, not '$udp'"
    check_uint size "$size" 64
    ((size <= 1518)) || bad_usage "--size must be 64..1518 (ringlb takes single-segment frames)"
    # --txpkts is the frame length without the FCS the NIC appends.
    tp=(--forward-mode=txonly --txonly-multi-flow "--tx-ip=$src,$dst" "--tx-udp=$udp"
      --txpkts=$((size - 4)) "--eth-peer=0,$mac" --nb-cores="$fwd" --rxq="$fwd" --txq="$fwd") ;;
  pcap)
    [ -n "$pcap" ] || bad_usage "pcap mode needs --pcap FILE"
    [ -r "$pcap" ] || bad_usage "cannot read '$pcap'"
    [[ $pcap != *[,=]* ]] || bad_usage "the pcap path must not contain ',' or '=' (it goes into a vdev argument)"
    pcap=$(realpath "$pcap")
    # PCI ports are probed before vdevs: the NIC is port 0, the pcap port 1
    # (without tx_pcap it drops whatever the NIC receives). mac forwarding is
    # io plus source MAC := port 0's, destination := --eth-peer.
    eal+=("--vdev=net_pcap0,rx_pcap=$pcap,infinite_rx=1")
    tp=(--forward-mode=mac "--eth-peer=0,$mac" --nb-cores=$((fwd < 2 ? fwd : 2)) --rxq=1 --txq=1) ;;
  *) bad_usage "--mode must be txonly or pcap, not '$mode'" ;;
esac

[ -n "$dry" ] || check_hugepages "$(mbufs_mb "$mbufs")"
run_testpmd "$dry" "$duration" "$log" -- "${eal[@]}" -- "${tp[@]}" "${common[@]}"
