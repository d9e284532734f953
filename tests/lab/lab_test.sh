#!/usr/bin/env bash
# Lab test: real kernel TCP clients (ab, curl) and real nginx servers in
# network namespaces, through the real ringlb on net_af_packet ports.
#   tests/lab/lab_test.sh dsr|nat
# Checks: ≥ 2,000 requests over 50 concurrent connections with 0 errors,
# each server's share within ±15% of its weight share (from nginx's own
# access logs), a 64 MiB download whose sha256 matches, a clean appliance
# shutdown, and no hugepage files or namespaces left behind.
set -euo pipefail
MODE=${1:?usage: lab_test.sh dsr|nat}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlb$$x$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-lab-$MODE.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"

REQUESTS=3000
CONCURRENCY=50
fail() { echo "FAIL lab-$MODE: $*"; [ -f "$LAB_DIR/ringlb.log" ] && tail -20 "$LAB_DIR/ringlb.log"; exit 1; }
cleanup() {
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then echo "FAIL lab-$MODE: namespaces left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT

lab_hugepages
lab_up "$MODE"
lab_start_ringlb "$ROOT/deploy/lab/$MODE.yaml" "$LAB_DIR/ringlb.log" --stats-interval 1
lab_wait_ready || fail "VIP $VIP not answering within 30 s"
# Test hook for tests/lab/cleanup_test.sh: fail with everything running.
[ -z "${LAB_FORCE_FAIL:-}" ] || fail "forced failure (cleanup test)"
C=$(lab_ns c)

# 1. Many short connections: ab opens one TCP connection per request.
for i in 1 2 3; do : > "$LAB_DIR/s$i/access.log"; done
ip netns exec "$C" ab -q -n "$REQUESTS" -c "$CONCURRENCY" -s 20 "http://$VIP/index.html" > "$LAB_DIR/ab.txt" 2>&1 || fail "ab failed: $(tail -5 "$LAB_DIR/ab.txt")"
complete=$(awk '/^Complete requests:/ {print $3}' "$LAB_DIR/ab.txt")
failed=$(awk '/^Failed requests:/ {print $3}' "$LAB_DIR/ab.txt")
non2xx=$(awk '/^Non-2xx responses:/ {print $3}' "$LAB_DIR/ab.txt")
echo "lab-$MODE: ab $REQUESTS requests, concurrency $CONCURRENCY: complete=$complete failed=$failed non2xx=${non2xx:-0}"
grep -E "^Requests per second|^Time per request.*\(mean\)$" "$LAB_DIR/ab.txt" | sed "s/^/lab-$MODE:   /"
[ "$complete" = "$REQUESTS" ] || fail "only $complete of $REQUESTS requests completed"
[ "$failed" = 0 ] || fail "$failed failed requests"
[ -z "${non2xx:-}" ] || fail "$non2xx non-2xx responses"

# 2. Shares by weight (1:2:3), counted by the servers themselves.
total=0; declare -a got
for i in 1 2 3; do got[$i]=$(grep -c ' 200 ' "$LAB_DIR/s$i/access.log" || true); total=$((total + got[i])); done
[ "$total" = "$REQUESTS" ] || fail "servers logged $total requests, expected $REQUESTS"
for i in 1 2 3; do
  python3 - "$i" "${got[$i]}" "$total" <<'PY' || fail "server s$i share out of bounds"
import sys
i, n, total = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
want = i / 6
share = n / total
ok = abs(share - want) <= 0.15 * want
print(f"lab: server s{i}: {n} requests, share {share:.3f}, weight share {want:.3f}, {'ok' if ok else 'OUT OF BOUNDS'}")
sys.exit(0 if ok else 1)
PY
done

# 3. A 64 MiB download through the VIP, byte for byte.
want=$(sha256sum "$LAB_DIR/www/big.bin" | cut -d' ' -f1)
ip netns exec "$C" curl -sS --max-time 180 -o "$LAB_DIR/dl.bin" "http://$VIP/big.bin" || fail "download failed"
got_sum=$(sha256sum "$LAB_DIR/dl.bin" | cut -d' ' -f1)
echo "lab-$MODE: 64 MiB download sha256 $got_sum (file $want)"
[ "$got_sum" = "$want" ] || fail "sha256 mismatch"

# 4. Clean stop: exit 0, summary printed, no hugepage files left.
lab_stop_ringlb || fail "ringlb exited non-zero on SIGTERM"
grep -q "ringlb stopped cleanly" "$LAB_DIR/ringlb.log" || fail "no clean-shutdown summary"
sed -n '/^summary/,$p' "$LAB_DIR/ringlb.log" | sed "s/^/lab-$MODE: /"
if compgen -G "/dev/hugepages/rtemap*" >/dev/null; then fail "hugepage files left in /dev/hugepages"; fi
echo "PASS lab-$MODE"
