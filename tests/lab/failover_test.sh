#!/usr/bin/env bash
# Lab test of active/standby failover (issue 9, items 1 and 4): two ringlb
# appliances on one L2 segment hold one VIP (cluster.vips: owned, sibling
# sync on, fast ring timers); real kernel clients and nginx servers, DSR or NAT
# (deploy/lab/failover.sh).
#   tests/lab/failover_test.sh dsr|nat [preempt|stay|rebuild]
# preempt (default): the returning appliance takes the VIP back; stay
# (cluster.preempt: false): the VIP stays with the appliance that took it;
# rebuild (issue 9 item 3): sibling sync off and the standby started only
# seconds before the kill, under load: the survivor's sessions come only
# from the servers' agents' connection lists (no return in this mode).
# Each server runs ringlb-agent in the ring (deploy/lab/failover.sh).
# Checks, in order:
#   1. only the owner (lb1, the ring's dispatcher) answers ARP for the VIP:
#      the client's ARP cache holds lb1's MAC; the pool of three VIPs is
#      spread (.1 and .3 at lb1, .2 at lb2; all at lb1 without preempt) and
#      every VIP answers, also after the kill (all at lb2) and the return;
#   2. under load (50 clients opening a connection per request, 20 on
#      keep-alive connections, tests/lab/http_load.py, which accounts for
#      every request it starts, and four throttled 64 MiB downloads) lb1 is
#      killed with SIGKILL: the time from the kill to the client's ARP cache
#      pointing at lb2 (its gratuitous ARP) is printed (goal ≤ 1.5 s);
#   3. lb1 restarts: once it holds lb2's sessions it takes the VIP back (the
#      client's cache points at lb1 again) or, with `stay`, leaves it with
#      lb2; all while (2) still runs;
#   4. 0 failed requests, every download's sha256 equal to the file's.
# LAB_TIMERS=seed runs the ring on the seed profile (2000/2500 ms; takeover
# goal 5.75 s instead of the fast profile's 1.5 s).
# Namespaces, processes and hugepage files are removed on exit, also on failure.
set -euo pipefail
MODE=${1:?usage: failover_test.sh dsr|nat [preempt|stay|rebuild]}
case $MODE in dsr|nat) ;; *) echo "usage: failover_test.sh dsr|nat [preempt|stay|rebuild]" >&2; exit 2 ;; esac
RETURN=${2:-preempt}
case $RETURN in preempt|stay|rebuild) ;; *) echo "usage: failover_test.sh dsr|nat [preempt|stay|rebuild]" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlf$$x$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-failover-$MODE.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"
# shellcheck source=load.sh
source "$ROOT/tests/lab/load.sh"
T="lab-failover-$MODE-$RETURN"
say() { echo "$T: $*"; }
fail() {
  echo "FAIL $T: $*"
  [ -z "${LAB_KEEP:-}" ] || cp -r "$LAB_DIR" "$LAB_KEEP" 2>/dev/null || true
  for n in 1 2; do [ -f "$LAB_DIR/lb$n.log" ] && { echo "--- lb$n"; grep -v ' INFO  stats t=' "$LAB_DIR/lb$n.log" | tail -15; }; done
  exit 1
}
cleanup() {
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then echo "FAIL $T: namespaces left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT

st() { lab_json "$LAB_DIR/lb$1.json" "$2"; }
C=$(lab_ns c)
MAC1=02:00:00:00:00:01
MAC2=02:00:00:00:00:02
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# pool EXPECTED...: every VIP of the pool answers a request, and the
# client's ARP cache holds the expected appliance's MAC for each.
pool() {
  local v want i=0 got
  local -a macs=("$@")
  for v in $FAILOVER_VIPS; do
    want=${macs[$i]}; i=$((i + 1))
    ip netns exec "$C" curl -sS --max-time 5 -o /dev/null "http://$v/index.html" || fail "VIP $v did not answer"
    got=$(lab_vip_mac "$v")
    [ "$got" = "$want" ] || fail "VIP $v resolved to $got, not $want"
  done
  say "pool: every VIP answers; $(for v in $FAILOVER_VIPS; do printf '%s at %s, ' "$v" "$(lab_vip_mac "$v")"; done | sed 's/, $//')"
}
# owner N: true when appliance N's status says it owns the VIP.
owns() { [ "$(st "$1" 's["cluster"]["vips"]["owners"][0]["here"]')" = True ]; }

lab_hugepages 512
# LAB_PREEMPT is read by lab_failover_config (deploy/lab/failover.sh).
[ "$RETURN" = stay ] && export LAB_PREEMPT=false
# LAB_SYNC is read by lab_failover_config: in rebuild mode the agents'
# lists are the only source of the survivor's sessions.
[ "$RETURN" = rebuild ] && export LAB_SYNC=false
lab_up "failover-$MODE"
# The standby joins an active appliance, as it would be deployed.
lab_start_appliance 1
for _ in $(seq 60); do sleep 0.5; owns 1 && break; done
owns 1 || fail "lb1 alone did not take the VIP"

# kill_owner: kill -9 lb1 and print the time until the client's ARP cache
# points at lb2 (its gratuitous ARP); fails past the profile's goal.
kill_owner() {
  local kill_ms moved_ms timers goal
  kill_ms=$(now_ms)
  kill -KILL "${APPLIANCE_PID[1]}"
  wait "${APPLIANCE_PID[1]}" 2>/dev/null || true
  moved_ms=
  for _ in $(seq 800); do
    [ "$(lab_vip_mac)" = "$MAC2" ] && { moved_ms=$(now_ms); break; }
    sleep 0.01
  done
  [ -n "$moved_ms" ] || fail "the client's ARP cache still points at the dead lb1 8 s after the kill: $(lab_vip_mac)"
  # Goals: the issue's 1.5 s for the fast profile; for the seed profile, one ring
  # round (detection 2,750 ms + the new view's broadcast timeout 2,500 ms, as
  # ringlb_ring::Timers::convergence_bound_ms counts it) plus 500 ms.
  timers=${LAB_TIMERS:-fast}; goal=1500; [ "$timers" = seed ] && goal=5750
  say "kill -9 lb1 → the client's ARP cache points at lb2 (its gratuitous ARP) after $(( moved_ms - kill_ms )) ms ($timers ring timers; goal ≤ $goal ms)"
  [ $(( moved_ms - kill_ms )) -le $goal ] || fail "takeover slower than $goal ms"
}

if [ "$RETURN" = rebuild ]; then
  ip netns exec "$C" curl -sS --max-time 5 -o /dev/null "http://$VIP/index.html" || fail "first request failed"
  load_start 30
  sleep 4
  # The standby starts cold, seconds before the kill: sync is off, so it
  # holds no session of lb1's.
  lab_start_appliance 2
  for _ in $(seq 60); do
    sleep 0.25
    [ "$(st 2 's["cluster"]["vips"]["owners"][0]["owner"] == "10.255.0.1:7400" and s["cluster"]["sync"] is None')" = True ] && break
  done
  [ "$(st 2 's["cluster"]["vips"]["owners"][0]["owner"]')" = 10.255.0.1:7400 ] || fail "lb2 did not join as lb1's standby"
  sleep 2
  say "lb2 started 4 s into the load, sync off; 2 s later it holds $(st 2 's["sessions"]["active"]') sessions before the kill (lb1: $(st 1 's["sessions"]["active"]'))"
  kill_owner
  pool "$MAC2" "$MAC2" "$MAC2"
  sleep 2
  rb() { st 2 "$1"; }
  say "lb2 rebuilt $(rb 's["rebuild"]["last"]["sessions"]') sessions of $(rb '",".join(s["rebuild"]["last"]["vips"])') from $(rb 's["rebuild"]["last"]["answered"]') of $(rb 's["rebuild"]["last"]["asked"]') servers' agents in $(rb 's["rebuild"]["last"]["ms"]') ms; packets held for them $(rb 's["midflow"]["awaited"]'), still without a session after the hold $(rb 's["midflow"]["await_timeouts"]'); rebuilt sessions that carried traffic $(rb 's["replication"]["adopted"]')"
  [ "$(rb 's["rebuild"]["last"]["answered"] == 3 and s["rebuild"]["last"]["sessions"] > 0')" = True ] \
    || fail "the rebuild did not hear all three agents or found no session: $(rb 's["rebuild"]')"
  [ "$(rb 's["replication"]["adopted"] > 0')" = True ] || fail "no rebuilt session carried traffic"
  load_wait
  load_check "the failover with sessions rebuilt from the agents"
  lab_stop_appliance 2 || fail "lb2 exited non-zero on SIGTERM"
  if compgen -G "/dev/hugepages/rtemap*" >/dev/null; then fail "hugepage files left in /dev/hugepages"; fi
  echo "PASS $T"
  exit 0
fi
lab_start_appliance 2
ready=0
for _ in $(seq 60); do
  sleep 0.5
  if owns 1 && [ "$(st 2 'len(s["cluster"]["siblings"]) == 1 and s["cluster"]["sync"]["in_sync"] and s["cluster"]["vips"]["owners"][0]["owner"] == "10.255.0.1:7400"')" = True ]; then
    ready=1; break
  fi
done
[ $ready = 1 ] || fail "lb1 does not own the VIP with lb2 as its in-sync standby"
sleep 1.5
# Test hook for tests/lab/cleanup_test.sh: fail with everything running.
[ -z "${LAB_FORCE_FAIL:-}" ] || fail "forced failure (cleanup test)"
# lb2 may take 198.18.100.2 (its share of the pool), never 198.18.100.1.
say "ring formed; VIP owners: $(st 2 '[(o["vip"], o["owner"]) for o in s["cluster"]["vips"]["owners"]]'); lb2 took $(st 2 's["cluster"]["vips"]["takeovers"]') VIP(s) while joining"
want_takeovers=1; [ "$RETURN" = stay ] && want_takeovers=0
[ "$(st 2 's["cluster"]["vips"]["takeovers"]')" = "$want_takeovers" ] || fail "the joining standby claimed an owned VIP"

# 1. Only the owner answers ARP.
ip netns exec "$C" curl -sS --max-time 5 -o /dev/null "http://$VIP/index.html" || fail "first request failed"
got=$(lab_vip_mac)
say "the client's ARP cache holds $got for the VIP (lb1 is $MAC1, lb2 $MAC2)"
[ "$got" = "$MAC1" ] || fail "the VIP resolved to $got, not the owner lb1"
# The pool (item 2): VIP i goes to candidate i mod 2 (lb1 first, the
# dispatcher), so lb2 took 198.18.100.2 when it joined; without preempt
# lb1 keeps all three.
if [ "$RETURN" = preempt ]; then pool "$MAC1" "$MAC2" "$MAC1"; else pool "$MAC1" "$MAC1" "$MAC1"; fi

# 2-4. kill -9 the owner under load, then bring it back.
load_start 36
sleep 8
adopted0=$(st 2 's["replication"]["adopted"]')
refused0=$(st 2 's["drops"]["vip_not_owned"]')
kill_owner
pool "$MAC2" "$MAC2" "$MAC2"
sleep 5
say "lb2 now: $(st 2 '"takeovers {}, live connections of lb1 it carried {}".format(s["cluster"]["vips"]["takeovers"], s["replication"]["adopted"])') (before the kill: adopted $adopted0, new flows refused as a standby $refused0)"
back_ms=$(now_ms)
lab_start_appliance 1
resync() { st 1 '"pulled {} sessions from {} in {} ms".format(s["cluster"]["sync"]["last_resync"]["sessions"], ", ".join(s["cluster"]["sync"]["last_resync"]["from"]), s["cluster"]["sync"]["last_resync"]["ms"])'; }
if [ "$RETURN" = preempt ]; then
  returned_ms=
  for _ in $(seq 300); do
    [ "$(lab_vip_mac)" = "$MAC1" ] && { returned_ms=$(now_ms); break; }
    sleep 0.05
  done
  [ -n "$returned_ms" ] || fail "lb1 did not take the VIP back within 15 s of its restart"
  sleep 1.2
  say "lb1 restarted; it resynced ($(resync)) and the client's ARP cache points at it again $(( returned_ms - back_ms )) ms after its start (it listens 1.2 s for the others before it claims)"
  owns 2 && fail "lb2 still owns the VIP after lb1 took it back"
  pool "$MAC1" "$MAC2" "$MAC1"
else
  for _ in $(seq 60); do
    sleep 0.5
    [ "$(st 1 's["cluster"]["sync"]["in_sync"] and s["cluster"]["sync"]["last_resync"] is not None')" = True ] && break
  done
  sleep 4
  say "lb1 restarted and resynced ($(resync)); 4 s later the VIP's owner is $(st 1 's["cluster"]["vips"]["owners"][0]["owner"]'), lb1 took it $(st 1 's["cluster"]["vips"]["takeovers"]') times, the client's ARP cache holds $(lab_vip_mac)"
  owns 2 || fail "without preempt the VIP left lb2"
  [ "$(st 1 's["cluster"]["vips"]["takeovers"]')" = 0 ] || fail "without preempt lb1 claimed the VIP"
  [ "$(lab_vip_mac)" = "$MAC2" ] || fail "the client's ARP cache moved to $(lab_vip_mac)"
  pool "$MAC2" "$MAC2" "$MAC2"
fi
load_wait
load_check "the failover and the return"
sleep 1.2
for n in 1 2; do
  say "lb$n: $(st "$n" '"vip_not_owned drops {}, takeovers {}, releases {}".format(s["drops"]["vip_not_owned"], s["cluster"]["vips"]["takeovers"], s["cluster"]["vips"]["releases"])')"
done

for n in 1 2; do lab_stop_appliance "$n" || fail "lb$n exited non-zero on SIGTERM"; done
if compgen -G "/dev/hugepages/rtemap*" >/dev/null; then fail "hugepage files left in /dev/hugepages"; fi
echo "PASS $T"
