# shellcheck shell=bash
# The BGP lab: two ringlb appliances announce the VIP by BGP (BIRD in each
# appliance's namespace, speaking through the data port's kernel interface)
# to a router that runs BIRD too and installs an ECMP route over both.
# Sourced by lab.sh:
#
#   lab_up bgp                  build it (then start the appliances and BIRD)
#   lab_bgp_config N FILE       appliance N's ringlb config (1-2)
#   lab_start_appliance N       ringlb in lbN (trunk.sh's, with this config); log LAB_DIR/lbN.log
#   lab_bgp_start_bird NAME     BIRD in namespace NAME (r, lb1, lb2); its socket LAB_DIR/bird-NAME.ctl
#
# Topology (addresses exist only in these namespaces):
#
#   client c 198.18.0.10 ── rc ┐  router r          ┌ a1 198.18.2.254 ── lb1 p0 198.18.2.1 (tap k0)
#                              │  BIRD AS 65000     │
#                              │  ECMP, L4 hash     └ a2 198.18.3.254 ── lb2 p0 198.18.3.1 (tap k0)
#   servers 198.18.1.11-13 on br1 ── rs 198.18.1.254 ┘   lbN p1 198.18.1.N on br1 (DSR to the servers)
#
# Each appliance's BIRD (AS 65001) peers with the router over its data
# port: BGP to 198.18.N.1 reaches the kernel through ringlb's tap k0 (the
# fast path passes what it does not answer for the port's own address),
# and BIRD's answers leave through the same tap and port. The servers
# answer clients directly (DSR) through the router, their gateway.

# lab_bgp_mac N P: appliance N's MAC on port P.
lab_bgp_mac() { echo "02:00:00:00:0$1:0$(($2 + 1))"; }

lab_up_bgp() {
  # shellcheck disable=SC2034  # read by trunk.sh (lab_start_appliance)
  LAB_KIND=bgp
  local sw r c; sw=$(lab_ns sw); r=$(lab_ns r); c=$(lab_ns c)
  lab_host_ns "$sw"
  ip -n "$sw" link add br1 type bridge forward_delay 0 stp_state 0
  ip -n "$sw" link set br1 up
  lab_host_ns "$r"
  lab_sysctl "$r" net.ipv4.ip_forward=1
  # ECMP by the L4 hash: a TCP flow stays on one appliance.
  lab_sysctl "$r" net.ipv4.fib_multipath_hash_policy=1
  lab_host_ns "$c"
  lab_veth "$c" eth0 "$r" rc
  ip -n "$c" addr add 198.18.0.10/24 dev eth0
  ip -n "$c" route add default via 198.18.0.254
  ip -n "$r" addr add 198.18.0.254/24 dev rc
  lab_link "$r" rs br1
  ip -n "$r" addr add 198.18.1.254/24 dev rs
  local n lb
  for n in 1 2; do
    lb=$(lab_ns "lb$n")
    lab_host_ns "$lb"
    lab_veth "$lb" p0 "$r" "a$n"
    ip -n "$r" addr add "198.18.$((n + 1)).254/24" dev "a$n"
    lab_link "$lb" p1 br1
  done
  for n in 1 2 3; do
    local s; s=$(lab_ns "s$n")
    lab_host_ns "$s"
    lab_link "$s" eth0 br1
    ip -n "$s" addr add "198.18.1.1$n/24" dev eth0
    ip -n "$s" addr add "$VIP/32" dev lo
    lab_sysctl "$s" net.ipv4.conf.all.arp_ignore=1
    lab_sysctl "$s" net.ipv4.conf.all.arp_announce=2
    lab_sysctl "$s" net.ipv4.conf.eth0.arp_ignore=1
    lab_sysctl "$s" net.ipv4.conf.eth0.arp_announce=2
    ip -n "$s" route add default via 198.18.1.254
    lab_nginx_conf "s$n" 80
    ip netns exec "$s" nginx -c "$LAB_DIR/s$n/nginx.conf" &
    LAB_PIDS+=($!)
  done
}

# lab_bgp_config N FILE: appliance N's configuration.
lab_bgp_config() {
  local n=$1
  cat > "$2" <<EOF
# BGP lab appliance $n (deploy/lab/bgp.sh), L4/2 (DSR).
eal: { control_core: 0, worker_cores: [1], hugepages: true, memory_mb: 192, idle: adaptive }
ports:
  - device: "net_af_packet0,iface=p0,qpairs=1"
    ip: 198.18.$((n + 1)).1/24
    mac: "$(lab_bgp_mac "$n" 0)"
    kernel: { tap: k0 }
  - device: "net_af_packet1,iface=p1,qpairs=1"
    ip: 198.18.1.$n/24
    mac: "$(lab_bgp_mac "$n" 1)"
services:
  - { name: web, vip: $VIP, port: 80, mode: dsr, scheduler: maglev, group: web }
server_groups:
  web:
    - { ip: 198.18.1.11, port: 80 }
    - { ip: 198.18.1.12, port: 80 }
    - { ip: 198.18.1.13, port: 80 }
sessions: { capacity: 65536 }
bird:
  vips_file: $LAB_DIR/lb$n-vips.conf
  socket: $LAB_DIR/bird-lb$n.ctl
EOF
}

# lab_bgp_start_bird NAME: BIRD in namespace NAME (r: the router; lbN:
# appliance N's, from the shipped deploy/bird/bird.conf).
lab_bgp_start_bird() {
  local name=$1 conf="$LAB_DIR/bird-$1.conf" n
  if [ "$name" = r ]; then
    cat > "$conf" <<EOF
router id 198.18.0.254;
protocol device { scan time 1; }
protocol direct { ipv4; interface "a*"; }
# The routes BGP learns, into the kernel; equal ones from both appliances
# merged into one ECMP route.
protocol kernel {
  ipv4 { import none; export where source = RTS_BGP; };
  merge paths on;
}
template bgp appliance {
  local as 65000;
  hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5;
  ipv4 { import all; export none; };
}
protocol bgp lb1 from appliance { local 198.18.2.254; neighbor 198.18.2.1 as 65001; }
protocol bgp lb2 from appliance { local 198.18.3.254; neighbor 198.18.3.1 as 65001; }
EOF
  else
    n=${name#lb}
    sed -e "s|198.18.0.1\b|198.18.$((n + 1)).1|g" -e "s|198.18.0.254|198.18.$((n + 1)).254|" \
        -e "s|/run/ringlb/bird-vips.conf|$LAB_DIR/lb$n-vips.conf|" \
        -e "s|hold time 90; keepalive time 30; connect retry time 5;|hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5;|" \
        "$ROOT/deploy/bird/bird.conf" > "$conf"
  fi
  ip netns exec "$(lab_ns "$name")" bird -f -c "$conf" -s "$LAB_DIR/bird-$name.ctl" -P "$LAB_DIR/bird-$name.pid" \
    > "$LAB_DIR/bird-$name.log" 2>&1 &
  LAB_PIDS+=($!)
}
