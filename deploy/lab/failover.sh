# shellcheck shell=bash
# The failover lab (issue 9): two ringlb appliances on one L2 segment with
# the same VIP, active/standby by the ring (cluster.vips: owned). Sourced by
# lab.sh:
#
#   lab_up failover-dsr          build it (then start the appliances)
#   lab_start_appliance N        ringlb in lbN (1-2); log LAB_DIR/lbN.log, status LAB_DIR/lbN.json
#   lab_vip_mac                  the MAC the client's ARP cache holds for the VIP
#
# Topology (addresses exist only in these namespaces):
#
#   client c 198.18.0.10 ──────┐
#   lb1 p0 198.18.0.1 :01 ─────┤ br0: one segment
#   lb2 p0 198.18.0.2 :02 ─────┤
#   servers 198.18.0.11-13 ────┘ (VIPs on lo; DSR replies go straight to the client)
#   VIPs 198.18.100.1-3: a pool spread over the live appliances
#   failover-nat: the servers 198.18.1.11-13 sit on br1 with the
#   appliances' p1 (198.18.1.1-2, MACs 02:00:00:00:01:0N) and route the
#   client's subnet via 198.18.100.1: the first VIP is their gateway, so it
#   moves with that VIP (its owner answers ARP for it on p1 too)
#   ring: lb1, lb2 ctl 10.255.0.1-2 on brc (kernel UDP, not the DPDK ports),
#         and each server's ringlb-agent, ctl 10.255.0.11-13 on brc: a new
#         VIP owner rebuilds its sessions from their connection lists
#
# LAB_SYNC=false turns sibling sync off: then the agents' lists are the only
# source of a new owner's sessions.
#
# The client reaches the VIPs on-link: it ARPs for them, so its traffic goes
# to whichever appliance answered last or announced the VIP last.

# The pool of VIPs (the first is lab.sh's VIP).
FAILOVER_VIPS="198.18.100.1 198.18.100.2 198.18.100.3"

lab_up_failover() {
  local mode=$1
  case $mode in dsr|nat) ;; *) echo "lab_up: failover-$mode is not built (dsr or nat)" >&2; return 1 ;; esac
  # shellcheck disable=SC2034 # read by lab_start_appliance (trunk.sh)
  LAB_KIND=failover
  FAILOVER_MODE=$mode
  local sw c; sw=$(lab_ns sw); c=$(lab_ns c)
  lab_host_ns "$sw"
  # NAT: the servers sit on their own segment (br1) behind the appliances.
  local bridges="br0 brc" servers_br=br0 net=198.18.0
  [ "$mode" = nat ] && { bridges="br0 br1 brc"; servers_br=br1; net=198.18.1; }
  for br in $bridges; do
    ip -n "$sw" link add "$br" type bridge forward_delay 0 stp_state 0
    ip -n "$sw" link set "$br" up
  done
  lab_host_ns "$c"
  lab_link "$c" eth0 br0
  ip -n "$c" addr add 198.18.0.10/24 dev eth0
  local v
  for v in $FAILOVER_VIPS; do ip -n "$c" route add "$v/32" dev eth0; done
  local n lb
  for n in 1 2; do
    lb=$(lab_ns "lb$n")
    lab_host_ns "$lb"
    lab_link "$lb" p0 br0
    ip netns exec "$lb" ethtool -K p0 rx off tx off tso off gso off gro off >/dev/null 2>&1 || true
    if [ "$mode" = nat ]; then
      lab_link "$lb" p1 br1
      ip netns exec "$lb" ethtool -K p1 rx off tx off tso off gso off gro off >/dev/null 2>&1 || true
    fi
    lab_link "$lb" ctl brc
    ip -n "$lb" addr add "10.255.0.$n/24" dev ctl
  done
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$LAB_DIR/cluster.key"
  chmod 600 "$LAB_DIR/cluster.key"
  for n in 1 2 3; do
    local s; s=$(lab_ns "s$n")
    lab_host_ns "$s"
    lab_link "$s" eth0 "$servers_br"
    ip -n "$s" addr add "$net.1$n/24" dev eth0
    lab_link "$s" ctl brc
    ip -n "$s" addr add "10.255.0.1$n/24" dev ctl
    if [ "$mode" = nat ]; then
      # The servers' gateway is the first VIP: its owner answers ARP for
      # it on the server side too, and its gratuitous ARP moves it there.
      ip -n "$s" route add 198.18.0.0/24 via 198.18.100.1 dev eth0 onlink
      lab_nginx_conf "s$n" 80 81 82
    else
      for v in $FAILOVER_VIPS; do ip -n "$s" addr add "$v/32" dev lo; done
      lab_sysctl "$s" net.ipv4.conf.all.arp_ignore=1
      lab_sysctl "$s" net.ipv4.conf.all.arp_announce=2
      lab_sysctl "$s" net.ipv4.conf.eth0.arp_ignore=1
      lab_sysctl "$s" net.ipv4.conf.eth0.arp_announce=2
      lab_nginx_conf "s$n" 80
    fi
    ip netns exec "$s" nginx -c "$LAB_DIR/s$n/nginx.conf" &
    LAB_PIDS+=($!)
    # The load the agent reports (namespaces share /proc/loadavg): 0 until
    # a test writes another figure.
    echo 0 > "$LAB_DIR/load$n"
    lab_failover_agent_config "$n" "$LAB_DIR/agent$n.yaml" "$net"
    ip netns exec "$s" "${RINGLB_AGENT:-$ROOT/target/release/ringlb-agent}" run -c "$LAB_DIR/agent$n.yaml" \
      >> "$LAB_DIR/agent$n.log" 2>&1 &
    LAB_PIDS+=($!)
  done
}

# The ring's members: the two appliances and the three servers' agents.
FAILOVER_MEMBERS="10.255.0.1:7400, 10.255.0.2:7400, 10.255.0.11:7400, 10.255.0.12:7400, 10.255.0.13:7400"

# lab_failover_agent_config N FILE NET: server N's ringlb-agent (the
# appliances' key file, their ring profile, its nginx as its check).
lab_failover_agent_config() {
  cat > "$2" <<AGENT
listen: 10.255.0.1$1:7400
peers: [$FAILOVER_MEMBERS]
dispatch_capable: false
key_file: $LAB_DIR/cluster.key
profile: ${LAB_TIMERS:-fast}
health: { url: "http://$3.1$1:80/index.html", interval_ms: 500, timeout_ms: 400 }
connection_ports: [80, 81, 82]
load_report_ms: 500
load_file: $LAB_DIR/load$1
status_file: $LAB_DIR/agent$1.status
AGENT
}

# lab_failover_config N FILE: appliance N's configuration (its own ring
# address, port address and MAC; LAB_PREEMPT=false keeps a VIP with the
# appliance that took it; LAB_TIMERS=seed runs the ring on the `seed`
# profile's 2000/2500 ms timers instead of the fast profile).
lab_failover_config() {
  sed -e "s|address: 10.255.0.1:7400|address: 10.255.0.$1:7400|" \
      -e "s|ip: 198.18.0.1/24|ip: 198.18.0.$1/24|" \
      -e "s|mac: \"02:00:00:00:00:01\"|mac: \"02:00:00:00:00:0$1\"|" \
      -e "s|ip: 198.18.1.1/24|ip: 198.18.1.$1/24|" \
      -e "s|mac: \"02:00:00:00:01:01\"|mac: \"02:00:00:00:01:0$1\"|" \
      -e "s|key_file: .*|key_file: $LAB_DIR/cluster.key|" \
      -e "s|^  vips: owned\$|  vips: owned\n  preempt: ${LAB_PREEMPT:-true}|" \
      -e "s|^  timers: fast\$|  timers: ${LAB_TIMERS:-fast}\n  sync: ${LAB_SYNC:-true}|" \
      "$ROOT/deploy/lab/failover-$FAILOVER_MODE.yaml" > "$2"
}

# lab_vip_mac [VIP]: the MAC in the client's ARP cache for the VIP ("" if none).
lab_vip_mac() {
  ip -n "$(lab_ns c)" neigh show "${1:-$VIP}" dev eth0 2>/dev/null | awk '/lladdr/ {print $3}'
}
