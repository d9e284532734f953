#!/usr/bin/env bash
# Lab test of server health and load from the ring (issue 9, item 5): one
# ringlb (DSR) before three nginx servers, each with ringlb-agent in the
# ring (deploy/lab/failover.sh, lb1 only).
#   tests/lab/health_test.sh
# Checks, in order:
#   1. under load (50 clients, a connection per request), nginx on s2 is
#      stopped: its agent's check fails and it leaves the ring; the time
#      from the stop to ringlb giving s2 weight 0 is printed; from then on
#      no new session goes to s2 and no request fails (a second load run);
#   2. nginx on s2 starts again: the agent re-joins, the time to s2's
#      weight coming back is printed, and s2 gets new sessions again;
#   3. least_load (the service on 198.18.100.2): s2's agent reports load 8
#      instead of 0; s2's share of new sessions drops (shares printed);
#   4. the service on 198.18.100.3 lists the servers without their agents:
#      ringlb probes them (TCP SYN every 300 ms, fall 2, rise 2); (1) and
#      (2) again, detected by the probe.
# Namespaces, processes and hugepage files are removed on exit, also on failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlh$$x$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-health.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"
T="lab-health"
say() { echo "$T: $*"; }
fail() {
  echo "FAIL $T: $*"
  [ -f "$LAB_DIR/lb1.log" ] && { echo "--- lb1"; grep -v ' INFO  stats t=' "$LAB_DIR/lb1.log" | tail -15; }
  exit 1
}
cleanup() {
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then echo "FAIL $T: namespaces left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT

C=$(lab_ns c)
S2=$(lab_ns s2)
py=/usr/bin/python3; [ -x "$py" ] || py=python3
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
st() { lab_json "$LAB_DIR/lb1.json" "$1"; }
# server FIELD LABEL: a field of one server's health entry.
server() { st "[x[\"$1\"] for x in s[\"servers\"] if x[\"server\"] == \"$2\"][0]"; }
sessions() { st "s[\"per_server\"][\"$1\"]"; }
# load URL SECONDS NAME: 50 clients, a connection per request (http_load.py).
load() {
  ip netns exec "$C" "$py" "$ROOT/tests/lab/http_load.py" "$1" --concurrency 50 --seconds "$2" \
    > "$LAB_DIR/$3.json" 2> "$LAB_DIR/$3.err" || fail "load client: $(cat "$LAB_DIR/$3.err")"
}
summary() { lab_json "$LAB_DIR/$1.json" '"started={started} completed={completed} failed={failed}".format(**s)'; }
WEB2=web/198.18.0.12:80

lab_hugepages 512
lab_up failover-dsr
lab_start_appliance 1
for _ in $(seq 60); do
  sleep 0.5
  [ "$(st 's["cluster"]["vips"]["owners"][0]["here"] and all(x["up"] for x in s["servers"])')" = True ] && break
done
[ "$(st 's["cluster"]["vips"]["owners"][0]["here"]')" = True ] || fail "lb1 did not take the VIP"
[ "$(st 'all(x["up"] for x in s["servers"])')" = True ] || fail "not every server's agent joined: $(st 's["servers"]')"
say "ring formed with the three agents; weights now: $(st '", ".join("{}={}".format(x["server"], x["weight_now"]) for x in s["servers"] if x["server"].startswith("web/"))')"

# outage VIP LABEL HOW: under load on VIP, stop nginx on s2; print the
# time until ringlb gives server LABEL weight 0 (detected by HOW); then no
# new session goes to it and no request fails; start nginx again and print
# the time until LABEL has weight again; it gets new sessions again.
outage() {
  local vip=$1 label=$2 how=$3 stop_ms down_ms at_down after start_ms up_ms before
  load "http://$vip/index.html" 10 "stop-$how" &
  local loader=$!
  sleep 3
  stop_ms=$(now_ms)
  kill -QUIT "$(cat "$LAB_DIR/s2/nginx.pid")"
  down_ms=
  for _ in $(seq 1000); do
    [ "$(server weight_now "$label")" = 0 ] && { down_ms=$(now_ms); break; }
    sleep 0.01
  done
  [ -n "$down_ms" ] || fail "$label still takes new flows 10 s after nginx stopped"
  at_down=$(sessions "$label")
  say "[$how] nginx on s2 stopped → ringlb gave $label weight 0 after $(( down_ms - stop_ms )) ms"
  wait "$loader"
  say "[$how] requests across the stop: $(summary "stop-$how") (those that met s2 between the stop and the detection may fail)"
  load "http://$vip/index.html" 5 "after-$how"
  after=$(sessions "$label")
  say "[$how] requests after the detection: $(summary "after-$how"); new sessions to s2 since: $(( after - at_down ))"
  [ "$(lab_json "$LAB_DIR/after-$how.json" 's["failed"] == 0 and s["completed"] > 500')" = True ] \
    || fail "requests failed after the detection: $(summary "after-$how")"
  [ "$after" = "$at_down" ] || fail "s2 got $(( after - at_down )) new sessions while down"
  start_ms=$(now_ms)
  ip netns exec "$S2" nginx -c "$LAB_DIR/s2/nginx.conf" &
  LAB_PIDS+=($!)
  up_ms=
  for _ in $(seq 1500); do
    [ "$(server weight_now "$label")" != 0 ] && { up_ms=$(now_ms); break; }
    sleep 0.01
  done
  [ -n "$up_ms" ] || fail "$label did not come back within 15 s of nginx's start"
  say "[$how] nginx on s2 started → $label has weight $(server weight_now "$label") again after $(( up_ms - start_ms )) ms"
  before=$(sessions "$label")
  load "http://$vip/index.html" 4 "back-$how"
  say "[$how] requests after the return: $(summary "back-$how"); new sessions to s2: $(( $(sessions "$label") - before ))"
  [ "$(lab_json "$LAB_DIR/back-$how.json" 's["failed"] == 0')" = True ] || fail "requests failed after s2 came back"
  [ $(( $(sessions "$label") - before )) -gt 0 ] || fail "s2 gets no traffic after it came back"
}

# 1-2. The agent's check fails: it leaves the ring.
outage "$VIP" "$WEB2" agent

# 3. least_load: s2 reports a high load.
shares() {
  st "\", \".join(\"{} {:.0f}%\".format(k.split(\"/\")[1], 100.0 * (s[\"per_server\"][k] - $1[k]) / max(1, sum(s[\"per_server\"][j] - $1[j] for j in $1))) for k in sorted($1))"
}
snap() { st "{k: v for k, v in s[\"per_server\"].items() if k.startswith(\"web2/\")}"; }
share_of_s2() {
  st "100.0 * (s[\"per_server\"][\"web2/198.18.0.12:80\"] - $1[\"web2/198.18.0.12:80\"]) / max(1, sum(s[\"per_server\"][j] - $1[j] for j in $1))"
}
s0=$(snap)
load "http://198.18.100.2/index.html" 4 ll-idle
say "least_load, every agent reports load 0: shares of new sessions $(shares "$s0") (weights 1:2:3)"
low=$(share_of_s2 "$s0")
echo 8 > "$LAB_DIR/load2"
for _ in $(seq 100); do
  [ "$(server load web2/198.18.0.12:80)" = 8.0 ] && break
  sleep 0.05
done
[ "$(server load web2/198.18.0.12:80)" = 8.0 ] || fail "s2's load report did not arrive: $(st 's["servers"]')"
s1=$(snap)
load "http://198.18.100.2/index.html" 4 ll-busy
say "least_load, s2 reports load 8: weights now $(st '", ".join("{}={}".format(x["server"], x["weight_now"]) for x in s["servers"] if x["server"].startswith("web2/"))'); shares $(shares "$s1")"
high=$(share_of_s2 "$s1")
[ "$(python3 -c "print($high < $low / 2)")" = True ] || fail "s2's share did not drop: $low% → $high%"
for j in ll-idle ll-busy; do
  [ "$(lab_json "$LAB_DIR/$j.json" 's["failed"] == 0')" = True ] || fail "requests failed in $j: $(summary "$j")"
done

# 4. Servers without an agent: the appliance's own probe.
[ "$(server checked_by web3/198.18.0.12:80)" = probe ] || fail "web3's servers are not probed: $(st 's["servers"]')"
outage 198.18.100.3 web3/198.18.0.12:80 probe

lab_stop_appliance 1 || fail "lb1 exited non-zero on SIGTERM"
if compgen -G "/dev/hugepages/rtemap*" >/dev/null; then fail "hugepage files left in /dev/hugepages"; fi
echo "PASS $T"
