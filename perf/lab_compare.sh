#!/usr/bin/env bash
# Bounded benchmark (part of `make bench`): wrk keep-alive load on the lab
# topology (deploy/lab/lab.sh), client -> VIP 198.18.100.1:80 -> 3 nginx
# servers (weights 1:2:3 everywhere), through four load balancers in the
# appliance namespace, one after the other, each on a fresh lab:
#   ringlb-dsr  ringlb, deploy/lab/dsr.yaml (net_af_packet on p0)
#   ringlb-nat  ringlb, deploy/lab/nat.yaml (net_af_packet on p0/p1)
#   haproxy     HAProxy `mode tcp`, roundrobin, on the NAT lab's kernel
#               interfaces: VIP on lo, connects to the servers from p1
#   nftables    kernel forwarding + nat prerouting dnat (numgen) on the NAT
#               lab's kernel interfaces; replies come back through conntrack
# Each: warm-up, then `wrk -t1 -c50 -d${DURATION}s --latency`. A variant
# counts only if wrk saw no socket errors and no non-2xx answers, and all
# three servers logged requests (at least as many as wrk completed).
#
#   perf/lab_compare.sh OUT.json [DURATION]     (DURATION, s: arg, env, default 5)
#   env: WARMUP (s, default 1), VARIANTS (subset, default all four),
#        HAPROXY_THREADS (default 1, like ringlb's single worker)
# Prints a table on stdout, progress on stderr, writes OUT.json; exits 1 if
# any variant failed. Absolute numbers from a shared 2-vCPU machine mean
# little; the ratios measured in the same run are the result.
set -euo pipefail
OUT=${1:?usage: perf/lab_compare.sh OUT.json [DURATION]}
DURATION=${2:-${DURATION:-5}}
WARMUP=${WARMUP:-1}
VARIANTS=${VARIANTS:-"ringlb-dsr ringlb-nat haproxy nftables"}
HAPROXY_THREADS=${HAPROXY_THREADS:-1}
CONNECTIONS=50
for v in "$DURATION" "$WARMUP" "$HAPROXY_THREADS"; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "lab_compare: not a whole number: $v" >&2; exit 2; }
done
[ "$DURATION" -ge 1 ] || { echo "lab_compare: DURATION must be >= 1" >&2; exit 2; }
[ "$HAPROXY_THREADS" -ge 1 ] || HAPROXY_THREADS=1
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RINGLB=${RINGLB:-$ROOT/target/release/ringlb}
LAB=${LAB:-"rlbcmp$$x$RANDOM"}
LAB_DIR=$(mktemp -d /tmp/ringlb-compare.XXXXXX)
# shellcheck source=../deploy/lab/lab.sh
source "$ROOT/deploy/lab/lab.sh"

log() { echo "lab_compare: $*" >&2; }

HAPROXY_PID=
cleanup() {
  if [ -n "$HAPROXY_PID" ]; then kill -TERM "$HAPROXY_PID" 2>/dev/null || true; fi
  lab_down
  if ip netns list | grep -q "^${LAB}-"; then log "WARNING: namespaces of $LAB left behind"; fi
  rm -rf "$LAB_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in wrk nginx curl python3 ethtool; do
  command -v "$tool" >/dev/null || { log "missing $tool (run deploy/setup.sh)"; exit 1; }
done

NCPU=$(nproc)
COMMON="; all: $NCPU shared vCPUs, nginx x3 and wrk on the same cores"
declare -A LIMIT=(
  [ringlb-dsr]="net_af_packet on veth: kernel copy per packet (client->server only, replies bypass), single busy-polling worker${COMMON}"
  [ringlb-nat]="net_af_packet on veth: kernel copy per packet both ways, single busy-polling worker${COMMON}"
  [haproxy]="user-space proxy, $HAPROXY_THREADS thread(s): two kernel TCP connections (client side + server side) per client connection, data copied through user space${COMMON}"
  [nftables]="kernel forwarding + conntrack/NAT in softirq (no user space), offloads off on p0/p1 as in the lab${COMMON}"
)
declare -A MODE=([ringlb-dsr]=dsr [ringlb-nat]=nat [haproxy]=nat [nftables]=nat)
for name in $VARIANTS; do
  [ -n "${MODE[$name]:-}" ] || { log "unknown variant $name"; exit 2; }
done

RESULTS=$LAB_DIR/results.tsv
: > "$RESULTS"

# The appliance namespace as a plain kernel router between br0 and br1
# (when ringlb is not running, p0/p1 are ordinary veth ends there).
kernel_lb_addrs() {
  local lb; lb=$(lab_ns lb)
  ip -n "$lb" addr add 198.18.0.1/24 dev p0
  ip -n "$lb" addr add 198.18.1.1/24 dev p1
}

start_ringlb() {
  local mode=$1
  [ -x "$RINGLB" ] || { echo "no ringlb binary at $RINGLB"; return 1; }
  lab_hugepages
  lab_start_ringlb "$ROOT/deploy/lab/$mode.yaml" "$LAB_DIR/lb.log" --stats-interval 0
  LB_PID=$RINGLB_PID
}

start_haproxy() {
  command -v haproxy >/dev/null || { echo "haproxy not installed (deploy/setup.sh)"; return 1; }
  local lb cfg=$LAB_DIR/haproxy.cfg; lb=$(lab_ns lb)
  kernel_lb_addrs
  ip -n "$lb" addr add "$VIP/32" dev lo
  cat > "$cfg" <<CFG
global
  nbthread $HAPROXY_THREADS
  maxconn 2000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend vip
  bind $VIP:80
  default_backend web
backend web
  balance roundrobin
  server s1 198.18.1.11:8080 weight 1
  server s2 198.18.1.12:8080 weight 2
  server s3 198.18.1.13:8080 weight 3
CFG
  # -db: foreground, no daemon or master process; `ip netns exec` execs, so
  # $! is haproxy's own PID. Its own config, nothing under /etc is used.
  ip netns exec "$lb" haproxy -db -f "$cfg" > "$LAB_DIR/lb.log" 2>&1 &
  HAPROXY_PID=$!
  LB_PID=$HAPROXY_PID
  LAB_PIDS+=("$HAPROXY_PID")
}

start_nftables() {
  command -v nft >/dev/null || { echo "nft not installed (deploy/setup.sh)"; return 1; }
  local lb; lb=$(lab_ns lb)
  kernel_lb_addrs
  lab_sysctl "$lb" net.ipv4.ip_forward=1
  # Weights 1:2:3 as six numgen slots; only a connection's first packet
  # reaches the nat chain, conntrack does the rest (and un-NATs replies).
  ip netns exec "$lb" nft -f - > "$LAB_DIR/lb.log" 2>&1 <<NFT
table ip lbnat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr $VIP tcp dport 80 dnat ip to numgen inc mod 6 map { 0 : 198.18.1.11 . 8080, 1 : 198.18.1.12 . 8080, 2 : 198.18.1.12 . 8080, 3 : 198.18.1.13 . 8080, 4 : 198.18.1.13 . 8080, 5 : 198.18.1.13 . 8080 }
  }
}
NFT
}

# Poll the VIP (like lab_wait_ready) but give up at once if the LB died.
wait_vip() {
  local c i; c=$(lab_ns c)
  for i in $(seq 60); do
    if [ -n "${LB_PID:-}" ] && ! kill -0 "$LB_PID" 2>/dev/null; then return 1; fi
    if ip netns exec "$c" curl -s --max-time 1 -o /dev/null "http://$VIP/whoami"; then return 0; fi
    sleep 0.5
  done
  return 1
}

# parse_wrk FILE -> "requests rps p99_ms error" (error "-" when clean)
parse_wrk() {
  python3 - "$1" <<'PY'
import re, sys
t = open(sys.argv[1], errors="replace").read()
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
req = re.search(r"^\s*(\d+) requests in", t, re.M)
rps = re.search(r"^Requests/sec:\s*([\d.]+)", t, re.M)
p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", t, re.M)
err = []
if not (req and rps and p99):
    err.append("unparsable wrk output")
m = re.search(r"Socket errors:.*", t)
if m and any(int(x) for x in re.findall(r"\d+", m.group(0))):
    err.append(m.group(0).strip())
m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", t)
if m and int(m.group(1)):
    err.append(m.group(0).strip())
if req and int(req.group(1)) == 0:
    err.append("0 requests")
print(req.group(1) if req else 0,
      rps.group(1) if rps else 0,
      f"{float(p99.group(1)) * unit[p99.group(2)]:.3f}" if p99 else 0,
      "; ".join(err) or "-")
PY
}

run_wrk() {
  local secs=$1 out=$2
  ip netns exec "$(lab_ns c)" timeout $((secs + 30)) \
    wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency "http://$VIP/" > "$out" 2>&1
}

run_variant() {
  local name=$1 mode=${MODE[$1]} err="" requests=0 rps=0 p99=0 counts="0,0,0" i
  log "== $name: lab $mode, ${WARMUP}s warm-up, ${DURATION}s measured"
  LB_PID=
  lab_up "$mode" >&2
  case $name in
    ringlb-*) start_ringlb "$mode" > "$LAB_DIR/start.log" 2>&1 || err="start: $(tail -1 "$LAB_DIR/start.log")" ;;
    haproxy) start_haproxy > "$LAB_DIR/start.log" 2>&1 || err="start: $(tail -1 "$LAB_DIR/start.log")" ;;
    nftables) start_nftables > "$LAB_DIR/start.log" 2>&1 || err="start: $(tail -1 "$LAB_DIR/start.log") $(tail -2 "$LAB_DIR/lb.log" 2>/dev/null | tr '\n' ' ')" ;;
  esac
  if [ -z "$err" ] && ! wait_vip; then
    err="VIP not answering: $({ grep -m2 -E 'ALERT|ERR|rror' "$LAB_DIR/lb.log" || tail -3 "$LAB_DIR/lb.log"; } 2>/dev/null | tr '\n' ' ')"
  fi
  if [ -z "$err" ]; then
    [ "$WARMUP" -eq 0 ] || run_wrk "$WARMUP" "$LAB_DIR/warmup.txt" || true
    for i in 1 2 3; do : > "$LAB_DIR/s$i/access.log"; done
    if run_wrk "$DURATION" "$LAB_DIR/wrk-$name.txt"; then
      local perr
      read -r requests rps p99 perr < <(parse_wrk "$LAB_DIR/wrk-$name.txt")
      [ "$perr" = "-" ] || err="wrk: $perr"
    else
      err="wrk failed: $(tail -2 "$LAB_DIR/wrk-$name.txt" | tr '\n' ' ')"
    fi
    # The servers' own logs: every server served, and they saw at least
    # what wrk counted (a request in flight at the end is logged, not counted).
    local n total=0 c=()
    for i in 1 2 3; do
      n=$(grep -c '" 200 ' "$LAB_DIR/s$i/access.log" || true)
      c+=("$n"); total=$((total + n))
      if [ -z "$err" ] && [ "$n" -eq 0 ]; then err="server s$i served no request"; fi
    done
    counts=$(IFS=,; echo "${c[*]}")
    if [ -z "$err" ] && [ "$total" -lt "$requests" ]; then
      err="servers logged $total requests, wrk counted $requests"
    fi
  fi
  case $name in
    ringlb-*)
      local rc=0
      lab_stop_ringlb || rc=$?
      if [ -z "$err" ] && [ "$rc" -ne 0 ]; then err="ringlb exited $rc on SIGTERM"; fi ;;
    haproxy)
      kill -TERM "$HAPROXY_PID" 2>/dev/null || true
      wait "$HAPROXY_PID" 2>/dev/null || true
      HAPROXY_PID= ;;
  esac
  lab_down
  err=${err//$'\t'/ }
  if [ -n "$err" ]; then
    log "$name FAILED: $err"
    [ ! -f "$LAB_DIR/wrk-$name.txt" ] || sed 's/^/    /' "$LAB_DIR/wrk-$name.txt" >&2
  else
    log "$name: $rps req/s, p99 $p99 ms, servers $counts"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$requests" "$rps" "$p99" "$counts" "${LIMIT[$name]}" "${err:--}" >> "$RESULTS"
}

for name in $VARIANTS; do run_variant "$name"; done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$DURATION" "$WARMUP" "$CONNECTIONS" <<'PY'
import json, sys
results, out, duration, warmup, conns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
variants = []
for line in open(results):
    name, req, rps, p99, counts, limit, err = line.rstrip("\n").split("\t")
    ok = err == "-"
    v = {"name": name, "rps": round(float(rps), 1) if ok else None,
         "p99_ms": float(p99) if ok else None, "ok": ok, "limit": limit,
         "requests": int(req), "per_server": [int(x) for x in counts.split(",")]}
    if not ok:
        v["error"] = err
    variants.append(v)
by = {v["name"]: v for v in variants}
ratios = {}
for a in ("ringlb-dsr", "ringlb-nat"):
    for b in ("haproxy", "nftables"):
        va, vb = by.get(a), by.get(b)
        ok = va and vb and va["ok"] and vb["ok"] and vb["rps"] > 0
        ratios[f"{a}/{b}"] = round(va["rps"] / vb["rps"], 3) if ok else None
doc = {"duration_s": duration, "warmup_s": warmup,
       "wrk": f"wrk -t1 -c{conns} -d{duration}s --latency http://198.18.100.1/",
       "variants": variants, "ratios": ratios, "ratios_of": "requests/s"}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
import os
os.replace(tmp, out)

print(f"lab comparison: wrk -t1 -c{conns}, {duration} s measured after {warmup} s warm-up, "
      "client -> 198.18.100.1:80 -> 3 nginx (weights 1:2:3)")
print(f"{'variant':<12} {'req/s':>10} {'p99 ms':>9}  {'per server':<20} limit")
for v in variants:
    if v["ok"]:
        print(f"{v['name']:<12} {v['rps']:>10.1f} {v['p99_ms']:>9.3f}  "
              f"{'/'.join(map(str, v['per_server'])):<20} {v['limit']}")
    else:
        print(f"{v['name']:<12} {'FAILED':>10} {'-':>9}  "
              f"{'/'.join(map(str, v['per_server'])):<20} {v['error']}")
print("ratios (req/s): " + ", ".join(
    f"{k} {'n/a' if r is None else f'{r:.3f}'}" for k, r in ratios.items()))
print(f"json: {out}")
PY
if grep -qv $'\t-$' "$RESULTS"; then exit 1; fi
