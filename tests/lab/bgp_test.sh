#!/usr/bin/env bash
# Lab test of BGP announcement through the kernel exception path
# (deploy/lab/bgp.sh): two ringlb appliances, each with a net_tap kernel
# interface on its data port and BIRD behind it, announce the VIP to a
# router running BIRD, which installs one ECMP route over both
# (fib_multipath_hash_policy=1: by the L4 hash). Shows:
#   - the router's BIRD and kernel route with two next hops;
#   - ab through the router: 0 failed, and both appliances made sessions;
#   - SIGTERM of one appliance: its route withdrawn (the time it took, less
#     than the BGP hold time of 3 s), and ab goes on through the other with
#     0 failed requests.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlb$$b$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-lab-bgp.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"
# shellcheck source=ab.sh
source "$ROOT/tests/lab/ab.sh"

T=lab-bgp
say() { echo "$T: $*"; }
fail() {
  echo "FAIL $T: $*"
  local f
  for f in lb1.log lb2.log; do
    [ -f "$LAB_DIR/$f" ] && { echo "--- $f"; grep -v ' stats t=' "$LAB_DIR/$f" | tail -15; }
  done
  for f in bird-r.log bird-lb1.log bird-lb2.log; do
    [ -f "$LAB_DIR/$f" ] && { echo "--- $f"; tail -15 "$LAB_DIR/$f"; }
  done
  for n in r lb1 lb2; do
    echo "--- $n: birdc show protocols"
    ip netns exec "$(lab_ns "$n")" birdc -s "$LAB_DIR/bird-$n.ctl" show protocols 2>&1 | tail -4 || true
  done
  exit 1
}
cleanup() {
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then echo "FAIL $T: namespaces left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT
command -v bird > /dev/null || fail "bird (BIRD 2) is not installed: run deploy/setup.sh"
R=$(lab_ns r)
# shellcheck disable=SC2034  # ab.sh runs ab in $C
C=$(lab_ns c)
# The router's route to the VIP: its next hops, one per line ("" if none).
next_hops() {
  { ip -n "$R" route show "$VIP/32" | grep -o 'via [0-9.]*' || true; } | awk '{print $2}' | sort | tr '\n' ' ' | sed 's/ $//'
}
created() { jq -r '.sessions.created' "$LAB_DIR/lb$1.json" 2>/dev/null || echo 0; }

lab_hugepages
lab_up bgp
lab_start_appliance 1
lab_start_appliance 2
for n in 1 2; do
  for _ in $(seq 100); do [ -f "$LAB_DIR/lb$n-vips.conf" ] && break; sleep 0.1; done
  [ -f "$LAB_DIR/lb$n-vips.conf" ] || fail "appliance $n did not write its VIP file"
  ip -n "$(lab_ns "lb$n")" -br addr show k0 | grep -q "198.18.$((n + 1)).1/24" || fail "lb$n: no kernel interface k0 with its address"
done
say "lb1: $(ip -n "$(lab_ns lb1)" -br addr show k0)"
lab_bgp_start_bird r
lab_bgp_start_bird lb1
lab_bgp_start_bird lb2

hops=""
for _ in $(seq 300); do
  hops=$(next_hops)
  [ "$hops" = "198.18.2.1 198.18.3.1" ] && break
  sleep 0.1
done
say "router: \$ birdc show route $VIP/32"
ip netns exec "$R" birdc -s "$LAB_DIR/bird-r.ctl" show route "$VIP/32" | sed "s/^/$T:   /"
say "router: \$ ip route show $VIP"
ip -n "$R" route show "$VIP/32" | sed "s/^/$T:   /"
[ "$hops" = "198.18.2.1 198.18.3.1" ] || fail "the router's route to $VIP has next hops '$hops', want both appliances"

ab_run "$T: ab 3000 requests, concurrency 50, through the router's ECMP route" "http://$VIP/index.html" 3000 50
sleep 1.2 # the status files follow each second
c1=$(created 1) c2=$(created 2)
say "sessions created: lb1 $c1, lb2 $c2"
[ "$c1" -gt 300 ] && [ "$c2" -gt 300 ] || fail "ECMP did not spread the flows over both appliances: lb1 $c1, lb2 $c2"
k1=$(jq -r '.kernel_in' "$LAB_DIR/lb1.json")
say "lb1 kernel interface: $k1 frames to the kernel, $(jq -r '.kernel_out' "$LAB_DIR/lb1.json") from it (BGP, ARP)"
[ "$k1" -gt 0 ] || fail "nothing reached lb1's kernel"

# Stop lb1 (SIGTERM): it empties its VIP list and tells its BIRD before
# its workers stop; the router must drop it well within the hold time.
ab_out="$LAB_DIR/ab-during-stop.txt"
ip netns exec "$C" ab -q -n 4000 -c 20 -s 30 "http://$VIP/index.html" > "$ab_out" 2>&1 &
AB=$!
sleep 0.5
t0=$(date +%s%N)
kill -TERM "${APPLIANCE_PID[1]}"
gone=""
for _ in $(seq 100); do
  [ "$(next_hops)" = "198.18.3.1" ] && { gone=$(( ($(date +%s%N) - t0) / 1000000 )); break; }
  sleep 0.05
done
[ -n "$gone" ] || fail "the router still routes to lb1 5 s after its SIGTERM: '$(next_hops)'"
say "lb1 stopped (SIGTERM): the router's route lost it after $gone ms (hold time 3000 ms): $(ip -n "$R" route show "$VIP/32")"
wait "${APPLIANCE_PID[1]}" || fail "lb1 exited non-zero on SIGTERM"
grep -q "bird: withdrawing every VIP (stopping)" "$LAB_DIR/lb1.log" || fail "lb1 did not log its withdrawal"
wait "$AB" || true
# Requests in flight on lb1 when it stopped may fail (its sessions go with
# it; that is the failover lab's business, not this one's): shown, not checked.
say "ab 4000 requests while lb1 stopped: $(grep -E '^(Complete|Failed) requests' "$ab_out" | tr -s ' ' | tr '\n' ' ')"
sleep 1.2
before=$(created 2)
ab_run "$T: ab 2000 requests, concurrency 50, lb1 stopped" "http://$VIP/index.html" 2000 50
sleep 1.2
after=$(created 2)
say "lb2 created $((after - before)) sessions for them"
[ $((after - before)) -ge 2000 ] || fail "lb2 did not take every new flow: $((after - before)) sessions for 2000 requests"

# lb1 back: announced again. Then lb2 crashes (kill -9): nothing withdraws
# its route but BGP's hold time (its tap, and so its BGP session, go with it).
lab_start_appliance 1
for _ in $(seq 200); do [ "$(next_hops)" = "198.18.2.1 198.18.3.1" ] && break; sleep 0.1; done
[ "$(next_hops)" = "198.18.2.1 198.18.3.1" ] || fail "lb1 restarted but is not announced again: '$(next_hops)'"
say "lb1 restarted: announced again, next hops $(next_hops)"
t0=$(date +%s%N)
kill -KILL "${APPLIANCE_PID[2]}"
gone=""
for _ in $(seq 200); do
  [ "$(next_hops)" = "198.18.2.1" ] && { gone=$(( ($(date +%s%N) - t0) / 1000000 )); break; }
  sleep 0.05
done
[ -n "$gone" ] || fail "the router still routes to lb2 10 s after its kill -9: '$(next_hops)'"
say "lb2 killed (kill -9): the router's route lost it after $gone ms (hold time 3000 ms)"
[ "$gone" -le 4500 ] || fail "lb2's route outlived the hold time by more than 1.5 s ($gone ms)"
ab_run "$T: ab 2000 requests, concurrency 50, lb2 killed" "http://$VIP/index.html" 2000 50

lab_stop_appliance 1 || fail "lb1 exited non-zero on SIGTERM"
for _ in $(seq 60); do [ -z "$(next_hops)" ] && break; sleep 0.05; done
[ -z "$(next_hops)" ] || fail "the route is still there after both appliances stopped: $(next_hops)"
say "both stopped: the router has no route to $VIP"
echo "PASS $T"
