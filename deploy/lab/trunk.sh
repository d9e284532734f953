# shellcheck shell=bash
# The port-trunk lab: three ringlb appliances with identical
# addresses behind a router that spreads TCP flows over them by an L4 hash,
# as a port-trunked switch or an LACP bond does. Sourced by lab.sh:
#
#   lab_up trunk-nat | trunk-dsr     build it (then start the appliances)
#   lab_trunk_config N FILE          appliance N's config (1-3)
#   lab_start_appliance N            ringlb in lbN; log LAB_DIR/lbN.log, status LAB_DIR/lbN.json
#   lab_trunk_set N...               the trunk spreads over these appliances
#   lab_lacp_monitor_start           play LACP: drop an appliance whose process died
#
# Topology (addresses exist only in these namespaces):
#
#   client c 198.18.0.10 ── rc ┐                ┌ a1 ── lb1 p0 ┐ each p0: 198.18.0.1, 02:00:00:00:00:01
#                              │   router r     ├ a2 ── lb2 p0 │ each p1: 198.18.1.1, 02:00:00:00:00:02
#   servers 198.18.1.11-13     │ nft netdev:    └ a3 ── lb3 p0 │ (identical addresses)
#   on br1 ── rs ──────────────┘ hash and fwd   ┌ b1..b3 ─ lbN p1
#   ring: lb1..lb3 ctl 10.255.0.1-3 on brc (kernel UDP, not the DPDK ports)
#
# The router's nftables netdev ingress chains do the trunking: client TCP to
# the appliances' MAC goes to `jhash ip saddr . tcp sport mod N` over the
# live members; on the server side a NAT reply goes by the same client
# endpoint (`ip daddr . tcp dport`), so both directions pick one member
# while all are up; ARP is copied to every appliance. In DSR mode servers
# answer through the router's own routing (their gateway is 198.18.1.254).
# No bonding driver or LACP runs here: lab_lacp_monitor_start plays LACP's
# link monitoring by watching the appliance processes (every 100 ms), and
# the tests re-add a restarted appliance once it reports its resync done.

TRUNK_MAC0=02:00:00:00:00:01
TRUNK_MAC1=02:00:00:00:00:02
TRUNK_SEED=0xc0ffee
declare -A APPLIANCE_PID=()

# lab_veth NS1 IF1 NS2 IF2: a veth pair between two namespaces, up, no offloads.
lab_veth() {
  ip -n "$1" link add "$2" type veth peer name "$4" netns "$3"
  ip -n "$1" link set "$2" up
  ip -n "$3" link set "$4" up
  local ns dev
  for ns_dev in "$1:$2" "$3:$4"; do
    ns=${ns_dev%%:*}; dev=${ns_dev#*:}
    ip netns exec "$ns" ethtool -K "$dev" tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
  done
}

lab_up_trunk() {
  local mode=$1
  TRUNK_MODE=$mode
  local sw r c; sw=$(lab_ns sw); r=$(lab_ns r); c=$(lab_ns c)
  lab_host_ns "$sw"
  for br in br1 brc; do
    ip -n "$sw" link add "$br" type bridge forward_delay 0 stp_state 0
    ip -n "$sw" link set "$br" up
  done
  lab_host_ns "$r"
  lab_sysctl "$r" net.ipv4.ip_forward=1
  lab_host_ns "$c"
  lab_veth "$c" eth0 "$r" rc
  ip -n "$c" addr add 198.18.0.10/24 dev eth0
  ip -n "$c" route add "$VIP/32" via 198.18.0.1
  ip -n "$r" addr add 198.18.0.254/24 dev rc
  lab_link "$r" rs br1
  ip -n "$r" addr add 198.18.1.254/24 dev rs
  ip netns exec "$r" ethtool -K rs tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
  local n lb
  for n in 1 2 3; do
    lb=$(lab_ns "lb$n")
    lab_host_ns "$lb"
    lab_veth "$lb" p0 "$r" "a$n"
    lab_veth "$lb" p1 "$r" "b$n"
    lab_link "$lb" ctl brc
    ip -n "$lb" addr add "10.255.0.$n/24" dev ctl
  done
  local web=80 sticky=81
  [ "$mode" = nat ] && { web=8080; sticky=8081; }
  for n in 1 2 3; do
    local s; s=$(lab_ns "s$n")
    lab_host_ns "$s"
    lab_link "$s" eth0 br1
    ip -n "$s" addr add "198.18.1.1$n/24" dev eth0
    if [ "$mode" = dsr ]; then
      ip -n "$s" addr add "$VIP/32" dev lo
      lab_sysctl "$s" net.ipv4.conf.all.arp_ignore=1
      lab_sysctl "$s" net.ipv4.conf.all.arp_announce=2
      lab_sysctl "$s" net.ipv4.conf.eth0.arp_ignore=1
      lab_sysctl "$s" net.ipv4.conf.eth0.arp_announce=2
      ip -n "$s" route add default via 198.18.1.254
    else
      ip -n "$s" route add default via 198.18.1.1
    fi
    lab_nginx_conf "s$n" "$web" "$sticky"
    ip netns exec "$s" nginx -c "$LAB_DIR/s$n/nginx.conf" &
    LAB_PIDS+=($!)
  done
  ip netns exec "$r" nft -f - <<NFT
table netdev trunk {
  chain from_client { type filter hook ingress device "rc" priority 0; policy accept; }
  chain from_servers { type filter hook ingress device "rs" priority 0; policy accept; }
  chain to_client_1 { type filter hook ingress device "a1" priority 0; policy accept; fwd to "rc"; }
  chain to_client_2 { type filter hook ingress device "a2" priority 0; policy accept; fwd to "rc"; }
  chain to_client_3 { type filter hook ingress device "a3" priority 0; policy accept; fwd to "rc"; }
  chain to_servers_1 { type filter hook ingress device "b1" priority 0; policy accept; fwd to "rs"; }
  chain to_servers_2 { type filter hook ingress device "b2" priority 0; policy accept; fwd to "rs"; }
  chain to_servers_3 { type filter hook ingress device "b3" priority 0; policy accept; fwd to "rs"; }
}
NFT
  lab_trunk_set 1 2 3
  # The cluster's shared secret, readable by root only.
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$LAB_DIR/cluster.key"
  chmod 600 "$LAB_DIR/cluster.key"
}

# lab_trunk_set N...: the trunk spreads over appliances N... (atomically).
lab_trunk_set() {
  local members=("$@")
  local k=${#members[@]} i map_a="" map_b=""
  for i in "${!members[@]}"; do
    map_a+="$i : \"a${members[$i]}\", "
    map_b+="$i : \"b${members[$i]}\", "
  done
  # ARP goes to every appliance, in the trunk or not: a restarting one must
  # resolve the servers before it takes traffic.
  local dup_a='dup to "a1" dup to "a2" dup to "a3"' dup_b='dup to "b1" dup to "b2" dup to "b3"'
  ip netns exec "$(lab_ns r)" nft -f - <<NFT
flush chain netdev trunk from_client
flush chain netdev trunk from_servers
add rule netdev trunk from_client ether type arp $dup_a accept
add rule netdev trunk from_client ether daddr $TRUNK_MAC0 ip protocol tcp fwd to jhash ip saddr . tcp sport mod $k seed $TRUNK_SEED map { ${map_a%, } }
add rule netdev trunk from_client ether daddr $TRUNK_MAC0 fwd to "a${members[0]}"
add rule netdev trunk from_servers ether type arp $dup_b accept
add rule netdev trunk from_servers ether daddr $TRUNK_MAC1 ip protocol tcp fwd to jhash ip daddr . tcp dport mod $k seed $TRUNK_SEED map { ${map_b%, } }
add rule netdev trunk from_servers ether daddr $TRUNK_MAC1 fwd to "b${members[0]}"
NFT
  TRUNK_MEMBERS=("${members[@]}")
  echo "$(date +%s%N) ${members[*]}" >> "$LAB_DIR/trunk.log"
}

# lab_trunk_config N FILE: appliance N's configuration from the mode's template.
lab_trunk_config() {
  sed -e "s|address: 10.255.0.1:7400|address: 10.255.0.$1:7400|" \
      -e "s|key_file: .*|key_file: $LAB_DIR/cluster.key|" \
      "$ROOT/deploy/lab/trunk-$TRUNK_MODE.yaml" > "$2"
}

# lab_start_appliance N [ARGS...]: ringlb in lbN (its log and status file in LAB_DIR).
lab_start_appliance() {
  local n=$1; shift
  case ${LAB_KIND:-trunk} in
    failover) lab_failover_config "$n" "$LAB_DIR/lb$n.yaml" ;;
    bgp) lab_bgp_config "$n" "$LAB_DIR/lb$n.yaml" ;;
    *) lab_trunk_config "$n" "$LAB_DIR/lb$n.yaml" ;;
  esac
  rm -f "$LAB_DIR/lb$n.json"
  ip netns exec "$(lab_ns "lb$n")" "$RINGLB" run -c "$LAB_DIR/lb$n.yaml" --stats-interval 1 \
    --status-file "$LAB_DIR/lb$n.json" --control-socket "$LAB_DIR/lb$n.sock" "$@" >> "$LAB_DIR/lb$n.log" 2>&1 &
  APPLIANCE_PID[$n]=$!
  LAB_PIDS+=($!)
}

# lab_stop_appliance N: SIGTERM, then wait (≤ 10 s); returns ringlb's status.
lab_stop_appliance() {
  local pid=${APPLIANCE_PID[$1]:-} i rc=0
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  unset "APPLIANCE_PID[$1]"
  return $rc
}

# Plays LACP's link monitoring: every 100 ms, an appliance whose namespace
# has no process left is dropped from the trunk (trunk.log records when).
lab_lacp_monitor_start() {
  (
    local live=("${TRUNK_MEMBERS[@]}") alive n
    while [ ! -f "$LAB_DIR/monitor.stop" ]; do
      # A member re-added by the test is watched from then on.
      if [ -f "$LAB_DIR/monitor.members" ]; then
        read -r -a live < "$LAB_DIR/monitor.members"
        rm -f "$LAB_DIR/monitor.members"
      fi
      alive=()
      for n in "${live[@]}"; do
        ip netns pids "$(lab_ns "lb$n")" 2>/dev/null | grep -q . && alive+=("$n")
      done
      if [ ${#alive[@]} -ne ${#live[@]} ] && [ ${#alive[@]} -gt 0 ]; then
        lab_trunk_set "${alive[@]}"
        live=("${alive[@]}")
      fi
      sleep 0.1
    done
  ) &
  LAB_PIDS+=($!)
}

# The trunk's members now (the last line of trunk.log).
lab_trunk_members() {
  tail -n 1 "$LAB_DIR/trunk.log" | cut -d' ' -f2-
}

# lab_trunk_add N: put appliance N (back) into the trunk, watched by the monitor.
lab_trunk_add() {
  local m
  # shellcheck disable=SC2046
  mapfile -t m < <(printf '%s\n' $(lab_trunk_members) "$1" | sort -u)
  lab_trunk_set "${m[@]}"
  echo "${m[*]}" > "$LAB_DIR/monitor.members"
}

# json FILE EXPR: a value from a status file (python3 expression over `s`).
lab_json() {
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}
