#!/usr/bin/env bash
# Lab test: real kernel TCP clients (ab, curl) and real nginx servers in
# network namespaces, through the real ringlb on net_af_packet ports.
#   tests/lab/lab_test.sh dsr|nat|syn-proxy
# Checks: ≥ 2,000 requests over 50 concurrent connections with 0 errors,
# each server's share within ±15% of its weight share (from nginx's own
# access logs), a 64 MiB download whose sha256 matches, a clean appliance
# shutdown, and no hugepage files or namespaces left behind. syn-proxy (the
# nat topology, deploy/lab/syn-proxy.yaml) also runs keep-alive requests,
# shows window scaling in effect on the client's connection, and checks
# that every connection went through a cookie.
set -euo pipefail
MODE=${1:?usage: lab_test.sh dsr|nat|syn-proxy}
case $MODE in
  dsr|nat) TOPOLOGY=$MODE ;;
  syn-proxy) TOPOLOGY=nat ;;
  *) echo "lab_test.sh: unknown mode '$MODE'" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlb$$x$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-lab-$MODE.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"
# shellcheck source=ab.sh
source "$ROOT/tests/lab/ab.sh"

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
lab_up "$TOPOLOGY"
lab_start_ringlb "$ROOT/deploy/lab/$MODE.yaml" "$LAB_DIR/ringlb.log" --stats-interval 1
lab_wait_ready || fail "VIP $VIP not answering within 30 s"
# Test hook for tests/lab/cleanup_test.sh: fail with everything running.
[ -z "${LAB_FORCE_FAIL:-}" ] || fail "forced failure (cleanup test)"
C=$(lab_ns c)

# 1. Many short connections: ab opens one TCP connection per request.
for i in 1 2 3; do : > "$LAB_DIR/s$i/access.log"; done
ab_run "lab-$MODE: ab $REQUESTS requests, concurrency $CONCURRENCY" "http://$VIP/index.html" "$REQUESTS" "$CONCURRENCY"

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

# 2b. SYN proxy: keep-alive requests over the spliced connections too.
if [ "$MODE" = syn-proxy ]; then
  ab_run "lab-$MODE: ab -k $REQUESTS requests, concurrency $CONCURRENCY" "http://$VIP/index.html" "$REQUESTS" "$CONCURRENCY" -k
  [ "$AB_KEEPALIVE" -gt 0 ] || fail "no request reused a connection"
fi

# 3. A 64 MiB download through the VIP, byte for byte.
want=$(sha256sum "$LAB_DIR/www/big.bin" | cut -d' ' -f1)
start_ns=$(date +%s%N)
ip netns exec "$C" curl -sS --max-time 180 -o "$LAB_DIR/dl.bin" "http://$VIP/big.bin" &
dl_pid=$!
if [ "$MODE" = syn-proxy ]; then
  # The client's view of the spliced connection: ss prints "wscale:S,R",
  # S the scale the appliance's cookie SYN-ACK gave (7), R the client's
  # own; without scaling there is no wscale at all.
  tcp_info=""
  for _ in $(seq 50); do
    tcp_info=$(ip netns exec "$C" ss -tinH state established "( dport = :80 )" 2>/dev/null | tr -s ' \n' ' ')
    case $tcp_info in *wscale*) break ;; esac
    sleep 0.1
  done
  echo "lab-$MODE: client TCP during the download: $(grep -oE 'wscale:[0-9,]+|rcv_space:[0-9]+|snd_wnd:[0-9]+|rcv_wnd:[0-9]+' <<< "$tcp_info" | tr '\n' ' ')"
  grep -qE 'wscale:7,[0-9]+' <<< "$tcp_info" || fail "window scaling not in effect on the client's connection: $tcp_info"
fi
wait "$dl_pid" || fail "download failed"
echo "lab-$MODE: download took $(( ($(date +%s%N) - start_ns) / 1000000 )) ms"
got_sum=$(sha256sum "$LAB_DIR/dl.bin" | cut -d' ' -f1)
echo "lab-$MODE: 64 MiB download sha256 $got_sum (file $want)"
[ "$got_sum" = "$want" ] || fail "sha256 mismatch"

# 4. Clean stop: exit 0, summary printed, no hugepage files left.
lab_stop_ringlb || fail "ringlb exited non-zero on SIGTERM"
sed -n '/^summary/,$p' "$LAB_DIR/ringlb.log" | sed "s/^/lab-$MODE: /"
if [ "$MODE" = syn-proxy ]; then
  # Every connection (ab, ab -k, curl, the readiness checks) was opened by a valid cookie.
  read -r cookies joined failed <<< "$(lab_status '.syn_proxy | "\(.cookies_sent) \(.joined) \(.failed)"')"
  [ "${joined:-0}" -ge $((REQUESTS + 1)) ] || fail "only ${joined:-0} proxied connections joined"
  [ "${cookies:-0}" -ge "$joined" ] || fail "more connections joined ($joined) than cookies sent (${cookies:-0})"
  [ "${failed:-1}" = 0 ] || fail "$failed proxied connections failed"
fi
if compgen -G "/dev/hugepages/rtemap*" >/dev/null; then fail "hugepage files left in /dev/hugepages"; fi
echo "PASS lab-$MODE"
