#!/usr/bin/env bash
# Lab test of hot reload on the NAT topology, under load that must not
# notice: 50 clients opening a connection per request, 20 on keep-alive
# connections and four 64 MiB downloads throttled to 2 MB/s (load.sh)
# run while the configuration file is rewritten and reloaded:
#   A. `ringlb reload`: s3 added, weights 1:1 → 1:2:3 (ab's requests, by
#      nginx's own logs, follow 1:2:3 within ±15 %);
#   B. `ringlb reload`: the service switches from wrr to maglev (same check);
#   C. an invalid file and a port change: both refused with their reason,
#      the appliance runs on;
#   D. SIGHUP: s3 removed (it carries no download: they started before it
#      was added); ab's requests reach s1 and s2 only, 1:2.
# Then: 0 failed requests, every download's sha256 intact.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlb$$r$RANDOM"}
LAB_DIR=$(mktemp -d "/tmp/ringlb-lab-reload.XXXXXX")
# shellcheck source=../../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"
# shellcheck source=ab.sh
source "$ROOT/tests/lab/ab.sh"
# shellcheck source=load.sh
source "$ROOT/tests/lab/load.sh"

T=lab-reload
SOCK=$LAB_DIR/lb.sock
CFG=$LAB_DIR/ringlb.yaml
say() { echo "$T: $*"; }
stamp() { say "at $(date +%s.%N | cut -c1-14): $*"; }
fail() {
  echo "FAIL $T: $*"
  [ -f "$LAB_DIR/lb.json" ] && echo "drops: $(jq -c '.drops | with_entries(select(.value > 0))' "$LAB_DIR/lb.json")"
  [ -f "$LAB_DIR/ringlb.log" ] && grep -v ' stats t=' "$LAB_DIR/ringlb.log" | tail -20
  exit 1
}
cleanup() {
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then echo "FAIL $T: namespaces left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT
ops() { "$RINGLB" "$@" --socket "$SOCK"; }

# write_config SCHEDULER "W1 W2 W3": the lab's NAT appliance with servers
# s1..s3 at these weights ("-": not configured).
write_config() {
  local scheduler=$1 i=1 w
  sed -e "s/scheduler: maglev/scheduler: $scheduler/" -e '/^server_groups:/,$d' "$ROOT/deploy/lab/nat.yaml" > "$CFG.new"
  printf 'server_groups:\n  web:\n' >> "$CFG.new"
  for w in $2; do
    [ "$w" = - ] || echo "    - { ip: 198.18.1.1$i, port: 8080, weight: $w }" >> "$CFG.new"
    i=$((i + 1))
  done
  printf 'sessions:\n  capacity: 65536\n' >> "$CFG.new"
  mv "$CFG.new" "$CFG"
}

# ab_share LABEL N "E1 E2 E3": N requests by ab; each server's share of
# them (nginx's logs, ab's user agent) must be within ±15 % of E1..E3 (0: none).
ab_share() {
  local label=$1 n=$2 i=1 e got before=() lo hi shares=""
  for i in 1 2 3; do before[i]=$(grep -c ApacheBench "$LAB_DIR/s$i/access.log" || true); done
  ab_run "$T: $label: ab $n requests, concurrency 20" "http://$VIP/index.html" "$n" 20
  i=1
  for e in $3; do
    got=$(( $(grep -c ApacheBench "$LAB_DIR/s$i/access.log" || true) - before[i] ))
    shares+="s$i=$got (want $e) "
    lo=$((e * 85 / 100)) hi=$((e * 115 / 100))
    [ "$got" -ge "$lo" ] && [ "$got" -le "$hi" ] || fail "$label: s$i answered $got of $n, want $e ±15 %"
    i=$((i + 1))
  done
  say "$label: answered by $shares"
}

lab_hugepages
lab_up nat
# shellcheck disable=SC2034  # ab.sh and load.sh run their clients in $C
C=$(lab_ns c)
write_config wrr "1 1 -"
lab_start_ringlb "$CFG" "$LAB_DIR/ringlb.log" --stats-interval 1
lab_wait_ready || fail "VIP $VIP not answering within 30 s"
v0=$(ops status --json | jq -r .config_version)
say "running config version $v0 (s1:1 s2:1, wrr)"

load_start 40
sleep 3

write_config wrr "1 2 3"
stamp "reload A"
out=$(ops reload) || fail "reload A refused: $out"
say "\$ ringlb reload → $out"
ab_share "after A (s3 added, weights 1:2:3, wrr)" 1200 "200 400 600"

write_config maglev "1 2 3"
stamp "reload B"
out=$(ops reload) || fail "reload B refused: $out"
say "\$ ringlb reload → $out"
ab_share "after B (maglev, weights 1:2:3)" 2400 "400 800 1200"
v_b=$(ops status --json | jq -r .config_version)

cp "$CFG" "$LAB_DIR/good.yaml"
sed -i 's/weight: 2 }/weight: two }/' "$CFG"
if out=$(ops reload 2>&1); then fail "an invalid file was accepted: $out"; fi
say "invalid file: \$ ringlb reload → $out"
echo "$out" | grep -q "ringlb.yaml:[0-9]*:[0-9]*" || fail "the error does not name file:line:column: $out"
sed -e 's#198.18.1.1/24#198.18.1.2/24#' "$LAB_DIR/good.yaml" > "$CFG"
if out=$(ops reload 2>&1); then fail "a port change was accepted: $out"; fi
say "port change: \$ ringlb reload → $out"
echo "$out" | grep -q "ports changed" || fail "the refusal does not name the ports: $out"
[ "$(ops status --json | jq -r .config_version)" = "$v_b" ] || fail "a refused reload changed the version"
kill -0 "$RINGLB_PID" || fail "ringlb died on a refused reload"

write_config maglev "1 2 -"
stamp "SIGHUP (reload D)"
kill -HUP "$RINGLB_PID"
for _ in $(seq 50); do grep -q "reload: config version $v_b" "$LAB_DIR/ringlb.log" && break; sleep 0.1; done
say "SIGHUP → $(grep "reload: config version $v_b" "$LAB_DIR/ringlb.log" | sed 's/^.*reload:/reload:/')"
grep -q "removed web/198.18.1.13:8080" "$LAB_DIR/ringlb.log" || fail "SIGHUP did not remove s3"
ab_share "after D (s3 removed by SIGHUP, maglev 1:2)" 1500 "500 1000 0"

say "\$ ringlb servers"
ops servers | sed "s/^/$T:   /"
[ "$(ops servers --json | jq length)" = 2 ] || fail "servers still lists the removed s3"

load_wait
say "drops by reason: $(jq -c '.drops | with_entries(select(.value > 0))' "$LAB_DIR/lb.json")"
load_check "three reloads and two refusals"
lab_stop_ringlb || fail "ringlb exited non-zero on SIGTERM"
grep -q "reload refused, the running configuration stays" "$LAB_DIR/ringlb.log" || fail "the refusals are not in the log"
echo "PASS $T"
