#!/usr/bin/env bash
# Lab test of the operator's interfaces, on the NAT topology with real ab
# traffic through the real ringlb:
#   - a real Prometheus server (Debian's package) in the appliance's
#     namespace scrapes its /metrics every second; the test asks
#     Prometheus's HTTP API for the packet and per-server session series,
#     and `promtool check metrics` checks the endpoint's text;
#   - `ringlb status`, `ringlb servers` (tables and --json through jq);
#   - `ringlb drain` of one server under load: nginx's own log shows it
#     gets no new request while drained, and `undrain` brings it back.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlb$$o$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-lab-ops.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"
# shellcheck source=ab.sh
source "$ROOT/tests/lab/ab.sh"

METRICS=127.0.0.1:9469
PROM=127.0.0.1:9090
SOCK=$LAB_DIR/lb.sock
fail() { echo "FAIL lab-ops: $*"; [ -f "$LAB_DIR/ringlb.log" ] && tail -20 "$LAB_DIR/ringlb.log"; exit 1; }
cleanup() {
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then echo "FAIL lab-ops: namespaces left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT
ops() { "$RINGLB" "$@" --socket "$SOCK"; }

lab_hugepages
lab_up nat
LB=$(lab_ns lb)
# shellcheck disable=SC2034  # ab.sh runs ab in $C
C=$(lab_ns c)
lab_start_ringlb "$ROOT/deploy/lab/nat.yaml" "$LAB_DIR/ringlb.log" --stats-interval 1 --metrics "$METRICS"
lab_wait_ready || fail "VIP $VIP not answering within 30 s"

# Prometheus, in the appliance's namespace (the endpoint is on its loopback).
cat > "$LAB_DIR/prometheus.yml" <<EOF
global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: ringlb
    static_configs: [ { targets: ["$METRICS"] } ]
EOF
promtool check config "$LAB_DIR/prometheus.yml" > /dev/null || fail "promtool rejects the scrape config"
ip netns exec "$LB" prometheus --config.file="$LAB_DIR/prometheus.yml" --storage.tsdb.path="$LAB_DIR/tsdb" \
  --web.listen-address="$PROM" > "$LAB_DIR/prometheus.log" 2>&1 &
LAB_PIDS+=($!)

for i in 1 2 3; do : > "$LAB_DIR/s$i/access.log"; done
ab_run "lab-ops: ab 2000 requests, concurrency 50" "http://$VIP/index.html" 2000 50

echo "lab-ops: \$ ringlb status"
ops status | sed 's/^/lab-ops:   /'
echo "lab-ops: \$ ringlb sessions --limit 5"
ops sessions --limit 5 | sed 's/^/lab-ops:   /'
echo "lab-ops: \$ ringlb servers"
ops servers | sed 's/^/lab-ops:   /'
created=$(ops status --json | jq '.sessions.created')
[ "$created" -ge 2000 ] || fail "ringlb status --json: sessions.created $created < 2000"
shares=$(ops servers --json | jq -r '[.[] | .new_sessions] | join(" ")')
echo "lab-ops: servers --json | jq new_sessions: $shares"
read -r n1 n2 n3 <<< "$shares"
[ "$n1" -gt 0 ] && [ "$n2" -gt "$n1" ] && [ "$n3" -gt "$n2" ] || fail "new sessions do not follow the weights 1:2:3: $shares"

# Drain s3 under load: it gets no new request; its weight is back after undrain.
echo "lab-ops: \$ ringlb drain 198.18.1.13"
ops drain 198.18.1.13 | sed 's/^/lab-ops:   /'
before=$(grep -c ' 200 ' "$LAB_DIR/s3/access.log" || true)
ab_run "lab-ops: ab 1000 requests, concurrency 50, s3 drained" "http://$VIP/index.html" 1000 50
after=$(grep -c ' 200 ' "$LAB_DIR/s3/access.log" || true)
echo "lab-ops: s3 answered $((after - before)) requests while drained"
[ "$after" = "$before" ] || fail "s3 got $((after - before)) requests while drained"
[ "$(ops servers --json | jq '.[2].drained')" = true ] || fail "servers does not show s3 drained"
ops undrain 198.18.1.13 > /dev/null
ab_run "lab-ops: ab 600 requests, concurrency 50, s3 back" "http://$VIP/index.html" 600 50
back=$(grep -c ' 200 ' "$LAB_DIR/s3/access.log" || true)
echo "lab-ops: s3 answered $((back - after)) requests after undrain"
[ "$back" -gt "$after" ] || fail "s3 got nothing after undrain"

# The endpoint's text passes promtool; Prometheus has scraped the series.
ip netns exec "$LB" curl -sS --max-time 5 "http://$METRICS/metrics" > "$LAB_DIR/metrics.txt" || fail "GET /metrics failed"
promtool check metrics < "$LAB_DIR/metrics.txt" || fail "promtool check metrics"
echo "lab-ops: promtool check metrics: ok ($(grep -vc '^#' "$LAB_DIR/metrics.txt") samples)"
query() {
  ip netns exec "$LB" curl -sS --max-time 5 "http://$PROM/api/v1/query" --data-urlencode "query=$1"
}
rx="" servers=""
for _ in $(seq 60); do
  rx=$(query 'ringlb_rx_packets_total' | jq -r '.data.result[0].value[1] // empty' 2>/dev/null || true)
  servers=$(query 'ringlb_server_new_sessions_total > 0' | jq -r '.data.result | length' 2>/dev/null || true)
  [ -n "$rx" ] && [ "$rx" -gt 0 ] && [ "${servers:-0}" = 3 ] && break
  sleep 1
done
echo "lab-ops: Prometheus API: ringlb_rx_packets_total = ${rx:-none}; servers with ringlb_server_new_sessions_total > 0: ${servers:-none}"
query 'ringlb_server_new_sessions_total' | jq -r '.data.result[] | "lab-ops:   \(.metric.server) \(.value[1])"'
[ -n "$rx" ] && [ "$rx" -gt 0 ] || fail "Prometheus has no ringlb_rx_packets_total > 0 (see $LAB_DIR/prometheus.log)"
[ "${servers:-0}" = 3 ] || fail "Prometheus has ${servers:-no} per-server session series > 0, expected 3"

lab_stop_ringlb || fail "ringlb exited non-zero on SIGTERM"
grep -q "ops: drained web/198.18.1.13:8080" "$LAB_DIR/ringlb.log" || fail "the drain is not in the log"
[ ! -e "$SOCK" ] || fail "the control socket was left behind"
echo "PASS lab-ops"
