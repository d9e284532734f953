# shellcheck shell=bash
# ringlb lab: network namespaces, veth and bridges for a client, the
# appliance and three nginx servers. Sourced by the lab tests and `make demo`.
#
#   lab_up MODE     MODE = dsr | nat | trunk-dsr | trunk-nat (three appliances
#                   behind a port-trunked router: trunk.sh) | failover-dsr (two
#                   appliances on one segment, active/standby: failover.sh) |
#                   bgp (two appliances announcing the VIP by BGP to a router: bgp.sh);
#                   needs LAB (unique prefix) and LAB_DIR set
#   lab_start_ringlb CONFIG LOG   runs ringlb in the appliance namespace
#   lab_down        stops everything started and removes the namespaces
#
# Topology (addresses only exist inside these namespaces):
#   dsr: client .10, appliance p0 .1, servers .11-.13, all on br0 198.18.0.0/24;
#        servers hold the VIP 198.18.100.1 on lo (arp_ignore=1, arp_announce=2)
#        and answer the client directly.
#   nat: client .10 and appliance p0 .1 on br0 198.18.0.0/24; appliance p1 .1
#        and servers .11-.13 on br1 198.18.1.0/24; servers route via the
#        appliance; the client only knows the VIP.

VIP=198.18.100.1
LAB_PIDS=()
# shellcheck source=trunk.sh
source "$(dirname "${BASH_SOURCE[0]}")/trunk.sh"
# shellcheck source=failover.sh
source "$(dirname "${BASH_SOURCE[0]}")/failover.sh"
# shellcheck source=bgp.sh
source "$(dirname "${BASH_SOURCE[0]}")/bgp.sh"

lab_ns() { echo "${LAB}-$1"; }

lab_sysctl() { ip netns exec "$1" sysctl -qw "$2" >/dev/null; }

# lab_link NS IFNAME BRIDGE: a veth from NS (named IFNAME) to BRIDGE in the switch.
lab_link() {
  local ns=$1 ifname=$2 br=$3
  local peer="${ns##*-}-$ifname" sw
  sw=$(lab_ns sw)
  ip -n "$sw" link add "$peer" type veth peer name "$ifname" netns "$ns"
  ip -n "$sw" link set "$peer" master "$br" up
  ip -n "$ns" link set "$ifname" up
  # Kernel TCP through af_packet needs real checksums, not offloaded partial ones.
  ip netns exec "$ns" ethtool -K "$ifname" tx off >/dev/null 2>&1 || true
}

lab_host_ns() {
  local ns=$1
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  lab_sysctl "$ns" net.ipv6.conf.all.disable_ipv6=1
  lab_sysctl "$ns" net.ipv6.conf.default.disable_ipv6=1
  lab_sysctl "$ns" net.ipv4.conf.all.rp_filter=0
  lab_sysctl "$ns" net.ipv4.conf.default.rp_filter=0
}

# lab_nginx_conf NAME PORT...: an nginx serving LAB_DIR/www on each port.
lab_nginx_conf() {
  local name=$1 d="$LAB_DIR/$1" listen="" p
  shift
  for p in "$@"; do listen+="    listen $p reuseport;"$'\n'; done
  mkdir -p "$d"
  cat > "$d/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 2048; }
http {
  access_log $d/access.log;
  client_body_temp_path $d/body;
  keepalive_requests 100000;
  server {
$listen    root $LAB_DIR/www;
    location = /whoami { return 200 "$name\n"; }
    # For the l7 lab: each server names itself and the part it serves.
    location /static/ { return 200 "$name static\n"; }
    location /api/ { return 200 "$name api\n"; }
  }
}
CONF
}

lab_up() {
  local mode=$1
  : "${LAB:?LAB must be set}" "${LAB_DIR:?LAB_DIR must be set}"
  mkdir -p "$LAB_DIR/www"
  chmod 755 "$LAB_DIR" "$LAB_DIR/www"
  echo "ringlb lab $LAB ($mode)" > "$LAB_DIR/www/index.html"
  [ -f "$LAB_DIR/www/big.bin" ] || head -c 64M /dev/urandom > "$LAB_DIR/www/big.bin"
  chmod 644 "$LAB_DIR/www/"*
  case $mode in
    trunk-dsr|trunk-nat) lab_up_trunk "${mode#trunk-}"; return ;;
    failover-dsr|failover-nat) lab_up_failover "${mode#failover-}"; return ;;
    bgp) lab_up_bgp; return ;;
    dsr|nat) ;;
    *) echo "lab_up: unknown mode '$mode'" >&2; return 1 ;;
  esac

  local sw c lb; sw=$(lab_ns sw); c=$(lab_ns c); lb=$(lab_ns lb)
  lab_host_ns "$sw"
  for br in br0 br1; do
    ip -n "$sw" link add "$br" type bridge forward_delay 0 stp_state 0
    ip -n "$sw" link set "$br" up
  done
  lab_host_ns "$c"
  lab_host_ns "$lb"
  lab_link "$c" eth0 br0
  ip -n "$c" addr add 198.18.0.10/24 dev eth0
  ip -n "$c" route add "$VIP/32" via 198.18.0.1
  lab_link "$lb" p0 br0
  local srv_net=198.18.0 srv_br=br0 port=80
  if [ "$mode" = nat ]; then
    lab_link "$lb" p1 br1
    srv_net=198.18.1 srv_br=br1 port=8080
  fi
  for p in p0 p1; do
    ip netns exec "$lb" ethtool -K "$p" rx off tx off tso off gso off gro off >/dev/null 2>&1 || true
  done
  for i in 1 2 3; do
    local s; s=$(lab_ns "s$i")
    lab_host_ns "$s"
    lab_link "$s" eth0 "$srv_br"
    ip -n "$s" addr add "$srv_net.1$i/24" dev eth0
    if [ "$mode" = dsr ]; then
      ip -n "$s" addr add "$VIP/32" dev lo
      lab_sysctl "$s" net.ipv4.conf.all.arp_ignore=1
      lab_sysctl "$s" net.ipv4.conf.all.arp_announce=2
      lab_sysctl "$s" net.ipv4.conf.eth0.arp_ignore=1
      lab_sysctl "$s" net.ipv4.conf.eth0.arp_announce=2
    else
      ip -n "$s" route add default via 198.18.1.1
    fi
    lab_nginx_conf "s$i" "$port"
    ip netns exec "$s" nginx -c "$LAB_DIR/s$i/nginx.conf" &
    LAB_PIDS+=($!)
  done
}

# Make sure DPDK has hugepages: PAGES x 2 MiB (default 256), mounted at /dev/hugepages.
lab_hugepages() {
  local want=${1:-256} have; have=$(cat /proc/sys/vm/nr_hugepages)
  if [ "$have" -lt "$want" ]; then echo "$want" > /proc/sys/vm/nr_hugepages; fi
  mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages; }
}

lab_start_ringlb() {
  local cfg=$1 log=$2; shift 2
  : > "$log"
  rm -f "$LAB_DIR/lb.json"
  ip netns exec "$(lab_ns lb)" "$RINGLB" run -c "$cfg" --control-socket "$LAB_DIR/lb.sock" \
    --status-file "$LAB_DIR/lb.json" "$@" > "$log" 2>&1 &
  RINGLB_PID=$!
  LAB_PIDS+=("$RINGLB_PID")
}

# Stop ringlb with SIGTERM and return its exit status (after at most 10 s).
# lab_status JQ: a value of the appliance's status file (rewritten every
# stats interval, and last at exit), e.g. lab_status .syn_proxy.joined.
lab_status() {
  jq -r "$1" "$LAB_DIR/lb.json"
}

lab_stop_ringlb() {
  [ -n "${RINGLB_PID:-}" ] || return 0
  kill -TERM "$RINGLB_PID" 2>/dev/null || true
  local i
  for i in $(seq 100); do kill -0 "$RINGLB_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$RINGLB_PID" 2>/dev/null || true
  local rc=0
  wait "$RINGLB_PID" || rc=$?
  RINGLB_PID=
  return $rc
}

# Poll the VIP until it answers (ARP for the servers takes up to a second).
lab_wait_ready() {
  local i
  for i in $(seq 60); do
    if ip netns exec "$(lab_ns c)" curl -s --max-time 1 "http://$VIP/whoami" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

lab_down() {
  lab_stop_ringlb >/dev/null 2>&1 || true
  local p
  for p in ${LAB_PIDS[@]+"${LAB_PIDS[@]}"}; do kill -TERM "$p" 2>/dev/null || true; done
  for p in ${LAB_PIDS[@]+"${LAB_PIDS[@]}"}; do wait "$p" 2>/dev/null || true; done
  LAB_PIDS=()
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^${LAB}-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
