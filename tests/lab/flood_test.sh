#!/usr/bin/env bash
# Lab test: a SYN flood against a service that answers SYNs with cookies
# while real clients use it, on the nat topology: a syn_proxy NAT service
# (deploy/lab/syn-proxy.yaml) or an l7 service (deploy/lab/l7.yaml).
#   tests/lab/flood_test.sh syn-proxy|l7
# hping3 sends FLOOD_SYNS spoofed SYNs from random sources (a bounded count)
# while ab runs 2,000 requests over 50 connections; then a spoofed SYN and
# a spoofed ACK on one tuple (the ACK cannot know the cookie). Checks: 0 ab
# errors; every flood SYN answered statelessly (cookies sent ≥ the SYNs
# that reached the worker) while the connections opened stay those of the
# real clients; the spoofed ACK is a counted cookie_forged (or cookie_stale) drop.
set -euo pipefail
MODE=${1:?usage: flood_test.sh syn-proxy|l7}
case $MODE in syn-proxy|l7) ;; *) echo "flood_test.sh: unknown mode '$MODE'" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlb$$f$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-lab-flood.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"
# shellcheck source=ab.sh
source "$ROOT/tests/lab/ab.sh"

FLOOD_SYNS=${FLOOD_SYNS:-1000000}
REQUESTS=2000
CONCURRENCY=50
fail() { echo "FAIL lab-flood-$MODE: $*"; [ -f "$LAB_DIR/ringlb.log" ] && tail -20 "$LAB_DIR/ringlb.log"; exit 1; }
cleanup() {
  [ -n "${FLOOD_PID:-}" ] && kill "$FLOOD_PID" 2>/dev/null
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then echo "FAIL lab-flood-$MODE: namespaces left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT
command -v hping3 >/dev/null || fail "hping3 is not installed (deploy/setup.sh installs it)"

lab_hugepages
lab_up nat
lab_start_ringlb "$ROOT/deploy/lab/$MODE.yaml" "$LAB_DIR/ringlb.log" --stats-interval 1
lab_wait_ready || fail "VIP $VIP not answering within 30 s"
C=$(lab_ns c)

# 1. The flood, from random sources, while the real clients work.
ip netns exec "$C" hping3 -q -S --rand-source -p 80 -i u1 -c "$FLOOD_SYNS" "$VIP" > "$LAB_DIR/hping.txt" 2>&1 &
FLOOD_PID=$!
sleep 1
ab_run "lab-flood-$MODE: ab $REQUESTS requests, concurrency $CONCURRENCY, during the flood" "http://$VIP/index.html" "$REQUESTS" "$CONCURRENCY"
kill -0 "$FLOOD_PID" 2>/dev/null || fail "the flood ended before ab did: raise FLOOD_SYNS"
# The flood is bounded; wait for it to end (at most 120 s).
for _ in $(seq 1200); do kill -0 "$FLOOD_PID" 2>/dev/null || break; sleep 0.1; done
kill "$FLOOD_PID" 2>/dev/null && fail "hping3 still running after 120 s"
wait "$FLOOD_PID" 2>/dev/null || true
FLOOD_PID=""
sed -n '/statistic/,$p' "$LAB_DIR/hping.txt" | sed "s/^/lab-flood-$MODE: hping3: /"

# 2. A spoofed SYN, then a spoofed ACK on its tuple: the ACK cannot carry the cookie.
ip netns exec "$C" hping3 -q -S -a 198.18.0.77 -s 5555 -k -p 80 -c 1 "$VIP" > /dev/null 2>&1 || true
ip netns exec "$C" hping3 -q -A -a 198.18.0.77 -s 5555 -k -p 80 -M 1001 -L 2002 -c 1 "$VIP" > /dev/null 2>&1 || true
sleep 1

# 3. What the appliance did.
lab_stop_ringlb || fail "ringlb exited non-zero on SIGTERM"
sed -n '/^summary/,$p' "$LAB_DIR/ringlb.log" | sed "s/^/lab-flood-$MODE: /"
read -r cookies opened failed_conns <<< "$(lab_status '.syn_proxy | "\(.cookies_sent) \(.opened) \(.failed)"')"
# A cookie that does not check is refused as forged, or as stale when its
# slice bits name no live slice (the spoofed ACK's number is arbitrary).
forged=$(lab_status '.drops.cookie_forged + .drops.cookie_stale')
echo "lab-flood-$MODE: cookies sent ${cookies:-0} for $FLOOD_SYNS flood SYNs + the real clients; connections opened ${opened:-0} for $REQUESTS requests; cookies refused (forged or stale) ${forged:-0}"
# ab's REQUESTS connections and the readiness checks' few; none of the flood's.
[ "${opened:-0}" -ge "$REQUESTS" ] && [ "${opened:-0}" -le $((REQUESTS + 100)) ] || fail "opened ${opened:-0} connections for $REQUESTS real ones"
[ "${cookies:-0}" -ge $((FLOOD_SYNS / 10)) ] || fail "only ${cookies:-0} cookies for $FLOOD_SYNS SYNs"
[ "${failed_conns:-1}" = 0 ] || fail "$failed_conns proxied connections failed"
[ "${forged:-0}" -ge 1 ] || fail "the spoofed ACK was not counted as cookie_forged or cookie_stale"
echo "PASS lab-flood-$MODE"
