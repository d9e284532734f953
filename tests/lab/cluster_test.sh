#!/usr/bin/env bash
# Lab test of the cluster: three ringlb appliances with identical
# addresses behind a port-trunked router (deploy/lab/trunk.sh), real kernel
# clients (ab, curl) and nginx servers.
#   tests/lab/cluster_test.sh nat|dsr
# Checks, in order:
#   1. idle: each appliance (eal.idle: adaptive) uses < 5 % of a core, and the
#      first request after idling is answered with no drop counted;
#   2. shares: ab, 3,000 requests at concurrency 50, 0 errors; each appliance
#      created ≥ 20 % of the sessions (its own counters);
#   3. failure under load: 50 clients opening a connection per request, 20
#      on keep-alive connections (tests/lab/http_load.py, which accounts for
#      every request it starts) and four throttled 64 MiB downloads run while
#      one appliance is killed with SIGKILL and the trunk drops it (the LACP
#      monitor): 0 failed requests, every sha256 intact;
#   4. rejoin: the killed appliance restarts, pulls a resync, is put back in
#      the trunk and takes new sessions, all while (3) still runs;
#   5. client locks: 200 sequential connections of one client, spread over
#      all three appliances, reach one server; after the lock's lifetime a
#      new lock is made.
# Namespaces, processes and hugepage files are removed on exit, also on failure.
set -euo pipefail
MODE=${1:?usage: cluster_test.sh nat|dsr}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlc$$x$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-cluster-$MODE.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"
# shellcheck source=load.sh
source "$ROOT/tests/lab/load.sh"
T="lab-cluster-$MODE"
say() { echo "$T: $*"; }
fail() {
  echo "FAIL $T: $*"
  # LAB_KEEP=DIR keeps the logs and status files of a failed run there.
  [ -z "${LAB_KEEP:-}" ] || cp -r "$LAB_DIR" "$LAB_KEEP" 2>/dev/null || true
  for n in 1 2 3; do [ -f "$LAB_DIR/lb$n.log" ] && { echo "--- lb$n"; grep -v ' INFO  stats t=' "$LAB_DIR/lb$n.log" | tail -15; }; done
  exit 1
}
cleanup() {
  touch "$LAB_DIR/monitor.stop" 2>/dev/null || true
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then echo "FAIL $T: namespaces left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT

# st N EXPR: a value from appliance N's status file.
st() { lab_json "$LAB_DIR/lb$1.json" "$2"; }
# Status files are rewritten every second: wait for a fresh one.
fresh() { sleep 1.2; }
C=$(lab_ns c)

lab_hugepages 512
lab_up "trunk-$MODE"
for n in 1 2 3; do lab_start_appliance "$n"; done
formed=0
for _ in $(seq 60); do
  sleep 0.5
  ok=1
  for n in 1 2 3; do
    [ "$(st "$n" 'len(s["cluster"]["siblings"]) == 2 and s["cluster"]["sync"]["in_sync"]')" = True ] || ok=0
  done
  [ $ok = 1 ] && { formed=1; break; }
done
[ $formed = 1 ] || fail "the three appliances did not form one ring with two siblings each"
say "ring formed: $(st 1 '" ".join(m["address"] for m in s["cluster"]["members"])'), dispatcher $(st 1 's["cluster"]["dispatcher"]')"
lab_lacp_monitor_start
# Test hook for tests/lab/cleanup_test.sh: fail with everything running.
[ -z "${LAB_FORCE_FAIL:-}" ] || fail "forced failure (cleanup test)"

# 1. Idle: CPU from /proc over 5 s, then the first request after idling.
sleep 2
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A t0
for n in 1 2 3; do t0[$n]=$(cpu_ticks "${APPLIANCE_PID[$n]}"); done
sleep 5
for n in 1 2 3; do
  used=$(( $(cpu_ticks "${APPLIANCE_PID[$n]}") - t0[$n] ))
  pct=$(python3 -c "print(f'{100 * $used / ($hz * 5):.1f}')")
  say "idle appliance lb$n: $pct % of a core over 5 s (utime+stime from /proc/${APPLIANCE_PID[$n]}/stat)"
  python3 -c "import sys; sys.exit(0 if $used / ($hz * 5) < 0.05 else 1)" || fail "lb$n uses $pct % of a core while idle"
done
# Drops of the request's own packets. Excluded: frames not addressed to an
# appliance at all (the lab copies every ARP frame to all three, and in DSR
# the router ARPs for the client): not_for_us and arp_ignored.
own_drops() {
  local n sum=0
  for n in 1 2 3; do
    sum=$(( sum + $(st "$n" 's["drops_total"] - s["drops"]["not_for_us"] - s["drops"]["arp_ignored"]') ))
  done
  echo "$sum"
}
drops0=$(own_drops)
ip netns exec "$C" curl -sS --max-time 5 -o /dev/null "http://$VIP/index.html" || fail "first request after idling failed"
fresh
drops1=$(own_drops)
say "first request after idling answered; drops of its packets counted before/after: $drops0/$drops1"
[ "$drops0" = "$drops1" ] || fail "the first packets after idling were dropped: $(for n in 1 2 3; do st "$n" 's["drops"]'; done)"

# 2. Every appliance carries its share.
declare -A c0
for n in 1 2 3; do c0[$n]=$(st "$n" 's["sessions"]["created"]'); done
ip netns exec "$C" ab -q -n 3000 -c 50 -s 20 "http://$VIP/index.html" > "$LAB_DIR/ab1.txt" 2>&1 || fail "ab: $(tail -3 "$LAB_DIR/ab1.txt")"
complete=$(awk '/^Complete requests:/ {print $3}' "$LAB_DIR/ab1.txt")
failed=$(awk '/^Failed requests:/ {print $3}' "$LAB_DIR/ab1.txt")
say "ab 3000 requests, concurrency 50: complete=$complete failed=$failed"
[ "$complete" = 3000 ] && [ "$failed" = 0 ] || fail "ab lost requests"
fresh
total=0; declare -A made
for n in 1 2 3; do made[$n]=$(( $(st "$n" 's["sessions"]["created"]') - c0[$n] )); total=$(( total + made[$n] )); done
for n in 1 2 3; do
  say "lb$n created ${made[$n]} of $total sessions ($(( 100 * made[$n] / total )) %)"
  [ $(( 100 * made[$n] )) -ge $(( 20 * total )) ] || fail "lb$n carries less than 20 % of the flows"
done

# 3 and 4. kill -9 one appliance under load, then bring it back.
load_start 36
sleep 8
declare -A a0
for n in 1 2 3; do a0[$n]=$(st "$n" 's["replication"]["adopted"]'); done
victim=2
kill_ns=$(date +%s%N)
kill -KILL "${APPLIANCE_PID[$victim]}"
wait "${APPLIANCE_PID[$victim]}" 2>/dev/null || true
for _ in $(seq 50); do
  grep -q " $victim\b" <<< " $(lab_trunk_members)" || break
  sleep 0.05
done
grep -q " $victim\b" <<< " $(lab_trunk_members)" && fail "the trunk still holds the dead appliance"
drop_ns=$(tail -n 1 "$LAB_DIR/trunk.log" | cut -d' ' -f1)
say "kill -9 lb$victim; the LACP monitor dropped it from the trunk $(( (drop_ns - kill_ns) / 1000000 )) ms later (trunk now: $(lab_trunk_members))"
sleep 7
fresh
moved=0
for n in 1 3; do moved=$(( moved + $(st "$n" 's["replication"]["adopted"]') - a0[$n] )); done
say "live connections that changed appliance (sessions of other appliances that carried a packet at lb1/lb3 since the kill): $moved"
start_ns=$(date +%s%N)
lab_start_appliance "$victim"
synced=0
for _ in $(seq 100); do
  sleep 0.2
  [ "$(st "$victim" 'len(s["cluster"]["siblings"]) == 2 and s["cluster"]["sync"]["in_sync"] and s["cluster"]["sync"]["last_resync"] is not None')" = True ] && { synced=1; break; }
done
[ $synced = 1 ] || fail "lb$victim did not finish its resync"
say "lb$victim restarted and resynced: $(st "$victim" '"pulled {} entries ({} sessions, {} locks) from {} in {} ms".format(s["cluster"]["sync"]["last_resync"]["sessions"] + s["cluster"]["sync"]["last_resync"]["locks"], s["cluster"]["sync"]["last_resync"]["sessions"], s["cluster"]["sync"]["last_resync"]["locks"], ", ".join(s["cluster"]["sync"]["last_resync"]["from"]), s["cluster"]["sync"]["last_resync"]["ms"])') ($(( ($(date +%s%N) - start_ns) / 1000000 )) ms after its start)"
back0=$(st "$victim" 's["sessions"]["created"]')
lab_trunk_add "$victim"
say "lb$victim back in the trunk (trunk now: $(lab_trunk_members))"
load_wait
fresh
back=$(( $(st "$victim" 's["sessions"]["created"]') - back0 ))
returned=$(st "$victim" 's["replication"]["adopted"]')
say "after rejoining, lb$victim created $back new sessions and carried $returned connections made by others"
[ "$back" -gt 0 ] || fail "lb$victim took no traffic after rejoining"
load_check "the failure and the rejoin" "trunk changes: $(cat "$LAB_DIR/trunk.log")"
for n in 1 2 3; do
  say "lb$n: $(st "$n" '"held first packets {held} (hold timeouts {timeouts}), sync refused {r}, ctl_overflow {o}".format(r=s["replication"]["refused"], o=s["replication"]["ctl_overflow"], **s["defer"])')"
done

# 5. Client locks.
: > "$LAB_DIR/who.txt"
declare -A l0
for n in 1 2 3; do l0[$n]=$(st "$n" 's["locks"]["created"] + s["locks"]["hits"]'); done
# The lock lives 15 s (deploy/lab/trunk-*.yaml); the 200 connections must
# fit in its lifetime, or a second lock may rightly pick another server.
locks_start=$SECONDS
for _ in $(seq 200); do
  ip netns exec "$C" curl -sS --max-time 5 "http://$VIP:81/whoami" >> "$LAB_DIR/who.txt" || fail "a sticky request failed"
done
took=$(( SECONDS - locks_start ))
servers=$(sort -u "$LAB_DIR/who.txt" | tr '\n' ' ')
say "200 sequential connections to the sticky service in ${took} s reached: $servers($(wc -l < "$LAB_DIR/who.txt") answers)"
[ "$took" -lt 15 ] || fail "the 200 connections took ${took} s, longer than the lock's 15 s lifetime: the test cannot tell"
[ "$(sort -u "$LAB_DIR/who.txt" | wc -l)" = 1 ] || fail "a locked client reached more than one server"
fresh
for n in 1 2 3; do
  used=$(( $(st "$n" 's["locks"]["created"] + s["locks"]["hits"]') - l0[$n] ))
  say "lb$n dispatched $used of them (lock made or used there)"
  [ "$used" -gt 0 ] || fail "lb$n saw none of the client's connections: the trunk did not spread them"
done
created0=$(( $(st 1 's["locks"]["created"]') + $(st 2 's["locks"]["created"]') + $(st 3 's["locks"]["created"]') ))
sleep 16
ip netns exec "$C" curl -sS --max-time 5 "http://$VIP:81/whoami" > "$LAB_DIR/who2.txt" || fail "sticky request after the lock's lifetime failed"
fresh
created1=$(( $(st 1 's["locks"]["created"]') + $(st 2 's["locks"]["created"]') + $(st 3 's["locks"]["created"]') ))
say "after the lock's 15 s lifetime: a new lock was made ($created0 → $created1 locks created); the client now reaches $(cat "$LAB_DIR/who2.txt")"
[ "$created1" -gt "$created0" ] || fail "no new lock after the old one's lifetime"

# Clean stop.
for n in 1 2 3; do lab_stop_appliance "$n" || fail "lb$n exited non-zero on SIGTERM"; done
if compgen -G "/dev/hugepages/rtemap*" >/dev/null; then fail "hugepage files left in /dev/hugepages"; fi
echo "PASS $T"
