#!/usr/bin/env bash
# The benchmark harness cannot rot: a smoke run of `ringlb-bench` (tiny
# inputs, 1 s windows, no lab) must finish and produce well-formed results:
# JSON with every scenario measured (sibling sync too: every session reaches
# the sibling), the Markdown table and three PNG plots. It asserts the shape
# of the results, never a performance figure.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
fail() { echo "FAIL bench-smoke: $*"; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$SECONDS
target/release/ringlb-bench --smoke --out "$out" || fail "ringlb-bench --smoke exited $?"
shopt -s nullglob
jsons=("$out"/*.json)
[ "${#jsons[@]}" = 1 ] || fail "expected one JSON result, found ${#jsons[@]}"
json=${jsons[0]}
stem=${json%.json}
grep -q '^| sessions | workers | scenario |' "$stem.md" || fail "Markdown table missing in $stem.md"
for kind in mpps ns ratio; do
  png="$stem-$kind.png"
  [ "$(head -c 8 "$png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$png is not a PNG"
done
python3 - "$json" <<'PY' || fail "malformed results in $json"
import json, math, sys
r = json.load(open(sys.argv[1]))
def num(x, what):
    assert isinstance(x, (int, float)) and math.isfinite(x) and x > 0, f"{what}: {x!r}"
for k in ("timestamp", "machine", "params", "references", "rows", "targets", "new_connections", "syn_cookies", "l7_connections"):
    assert k in r, f"missing {k}"
assert {x["mode"] for x in r["references"]} == {"io", "macswap", "io (replies)", "io (l7 segments)"}, r["references"]
for x in r["references"]:
    num(x["mpps"], f"testpmd {x['mode']} Mpps")
assert sorted(x["scenario"] for x in r["rows"]) == ["dsr", "l7-spliced", "nat-forward", "nat-reply"], r["rows"]
for x in r["rows"]:
    for k in ("mpps", "testpmd_io_mpps", "ratio", "ns_per_packet", "tsc_cycles_per_packet",
              "table_bytes_per_session", "process_memory_bytes"):
        num(x[k], f"{x['scenario']} {k}")
    assert isinstance(x["drops_in_window"], int) and x["drops_in_window"] >= 0
num(r["new_connections"]["per_second_per_worker"], "new connections per second")
num(r["syn_cookies"]["per_second_per_worker"], "SYN cookies answered per second")
num(r["l7_connections"]["per_second_per_worker"], "L7 connections per second")
s = r["sync"]
t = s["transfer"]
num(t["updates_per_s"], "sync updates per second")
num(t["lag_p99_ms"], "sync lag p99")
assert t["installed"] == t["sessions"], f"sibling installed {t['installed']} of {t['sessions']} sessions"
for k in ("dsr_sync_off_mpps", "dsr_sync_on_mpps", "on_off_ratio"):
    num(s[k], f"sync {k}")
for k in ("reliable_records_per_s", "sync_records_per_s"):
    num(s["transports"][k], f"transports {k}")
assert [i["sessions"] for i in r["instructions"]] == [1000, 100000], r["instructions"]
for i in r["instructions"]:
    num(i["worker"], f"instructions per packet at {i['sessions']} sessions")
    assert i["with_harness"] > i["worker"], i
assert len(r["targets"]) == 13 and all({"name", "target", "value", "met"} <= t.keys() for t in r["targets"])
print(f"bench-smoke: {len(r['rows'])} rows, {len(r['references'])} testpmd references, "
      f"e.g. dsr {r['rows'][0]['mpps']:.2f} Mpps = {r['rows'][0]['ratio']:.2f} of testpmd io")
PY
echo "PASS bench-smoke: well-formed JSON, Markdown and plots in $((SECONDS - start)) s"
