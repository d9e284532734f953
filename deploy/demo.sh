#!/usr/bin/env bash
# `make demo`: the appliance's main job on the built-in lab topology.
# Brings up the NAT lab (client, appliance on net_af_packet, 3 nginx), runs
# ringlb with deploy/demo.yaml, drives ~20 s of traffic (wrk keep-alive load
# plus ab connection churn) while ringlb prints per-second stats, then
# stops everything and removes the namespaces.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB="rlbdemo$$"
LAB_DIR=$(mktemp -d /tmp/ringlb-demo.XXXXXX)
source "$ROOT/deploy/lab/lab.sh"
trap 'lab_down; rm -rf "$LAB_DIR"' EXIT

echo "== ringlb demo: NAT appliance in front of 3 nginx servers (weights 1:2:3)"
lab_hugepages
lab_up nat
"$RINGLB" check -c "$ROOT/deploy/demo.yaml" | sed -n '1,40p'
lab_start_ringlb "$ROOT/deploy/demo.yaml" "$LAB_DIR/ringlb.log" --stats-interval 1
tail -n +1 -f "$LAB_DIR/ringlb.log" --pid "$RINGLB_PID" &
TAIL=$!
lab_wait_ready || { echo "demo: the VIP did not answer"; exit 1; }
C=$(lab_ns c)
echo "== driving traffic for 20 s: wrk (16 keep-alive connections) + ab (new connection per request)"
ip netns exec "$C" wrk -t1 -c16 -d20s "http://$VIP/index.html" > "$LAB_DIR/wrk.txt" 2>&1 &
WRK=$!
ip netns exec "$C" ab -q -t 20 -n 1000000 -c 8 -s 10 "http://$VIP/index.html" > "$LAB_DIR/ab.txt" 2>&1 &
AB=$!
sleep 10
echo "== halfway: what the operator sees (ringlb status, ringlb servers, over the control socket)"
"$RINGLB" status --socket "$LAB_DIR/lb.sock"
"$RINGLB" servers --socket "$LAB_DIR/lb.sock"
wait "$WRK" || true
wait "$AB" || true
rc=0
lab_stop_ringlb || rc=$?
wait "$TAIL" 2>/dev/null || true
echo "== wrk:"; sed -n '1,12p' "$LAB_DIR/wrk.txt"
echo "== ab:"; grep -E "^(Complete|Failed) requests|^Requests per second" "$LAB_DIR/ab.txt" || true
echo "== per-server requests (nginx access logs):"
for i in 1 2 3; do echo "  s$i: $(wc -l < "$LAB_DIR/s$i/access.log")"; done
[ "$rc" = 0 ] || { echo "demo: ringlb exited with status $rc"; exit 1; }
echo "== demo done"
