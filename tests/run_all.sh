#!/usr/bin/env bash
# `make test`: every tier, then one closing line "N passed, M failed".
#   1. cargo test: unit tests, data-plane/config tests, vdev tests of the real binary
#   2. lab tests: DSR, NAT, the operator's interfaces (a real Prometheus
#      scraping the appliance, the CLI, drain under load), the SYN proxy (also under a SYN flood) and L7 through
#      real namespaces, nginx, ab and curl; the
#      cluster: three appliances behind a port-trunked router, failure and rejoin;
#      failover: two appliances on one segment, VIP takeover by gratuitous ARP;
#        with sync off, sessions rebuilt from the servers' agents; health: servers whose
#        agent leaves the ring get no new flows, least_load follows load reports;
#      hot reload under load; BGP: two appliances announce the VIP through
#        BIRD over their net_tap kernel interfaces to an ECMP router
#   3. a smoke run of the benchmark harness (well-formed results only)
#   4. coverage-guided fuzzing, 20 s per target (`make fuzz` runs longer)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
passed=0; failed=0
run() {
  local name=$1; shift
  echo "=== $name"
  if "$@"; then passed=$((passed + 1)); echo "=== $name: ok"; else failed=$((failed + 1)); echo "=== $name: FAILED"; fi
}
run "cargo test (unit, dataplane, config, vdev)" cargo test --workspace -- --test-threads=1
run "deploy scripts and install" bash tests/deploy_test.sh
run "lab DSR" bash tests/lab/lab_test.sh dsr
run "lab NAT" bash tests/lab/lab_test.sh nat
run "lab operations (Prometheus scrape, status/servers, drain under load)" bash tests/lab/ops_test.sh
run "lab hot reload under load (servers, weights, wrr → maglev, refusals, SIGHUP)" bash tests/lab/reload_test.sh
run "lab SYN proxy" bash tests/lab/lab_test.sh syn-proxy
run "lab SYN flood, syn_proxy" bash tests/lab/flood_test.sh syn-proxy
run "lab SYN flood, l7" bash tests/lab/flood_test.sh l7
run "lab L7" bash tests/lab/l7_test.sh
run "lab cluster NAT (3 appliances behind a trunk)" bash tests/lab/cluster_test.sh nat
run "lab cluster DSR (3 appliances behind a trunk)" bash tests/lab/cluster_test.sh dsr
run "lab failover DSR (2 appliances, one VIP, kill -9 and return)" bash tests/lab/failover_test.sh dsr preempt
run "lab failover DSR without preempt (the VIP stays)" bash tests/lab/failover_test.sh dsr stay
run "lab failover DSR, sync off, cold standby (sessions rebuilt from the agents)" bash tests/lab/failover_test.sh dsr rebuild
run "lab failover NAT (servers' gateway is the first VIP; kill -9 and return)" bash tests/lab/failover_test.sh nat preempt
run "lab failover NAT, sync off, cold standby (sessions rebuilt from the agents)" bash tests/lab/failover_test.sh nat rebuild
run "lab health (agent leaves the ring: no new flows; least_load shares)" bash tests/lab/health_test.sh
run "lab BGP (two appliances announce the VIP by BGP through their kernel interfaces; ECMP; stop and kill -9)" bash tests/lab/bgp_test.sh
run "lab cleanup on failure" bash tests/lab/cleanup_test.sh
run "benchmark smoke run" bash tests/bench_smoke.sh
run "fuzzing, 20 s per target (packet path, ring and sync wire, YAML, L7 decoders)" bash fuzz/run.sh 20
echo "suites: $passed passed, $failed failed"
[ "$failed" = 0 ]
