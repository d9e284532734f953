# shellcheck shell=bash
# Load that must survive a failure, for the cluster and failover lab tests:
# 50 clients opening a connection per request and 20 on keep-alive
# connections (http_load.py accounts for every request it starts), plus four
# 64 MiB downloads throttled to 2 MB/s so they outlast the failure. Sourced
# after lab.sh; uses the test's say/fail, C (client namespace) and LAB_DIR.
#
#   load_start SECONDS     start it all in the background
#   load_wait              wait for it to end
#   load_check WHAT [MORE] print and check: 0 failed requests, every sha256 intact
#                          (MORE: added to a failure's message)

load_start() {
  local seconds=$1 d py=/usr/bin/python3
  [ -x "$py" ] || py=python3
  LOAD_WANT=$(sha256sum "$LAB_DIR/www/big.bin" | cut -d' ' -f1)
  ip netns exec "$C" "$py" "$ROOT/tests/lab/http_load.py" "http://$VIP/index.html" --concurrency 50 \
    --seconds "$seconds" > "$LAB_DIR/load-new.json" 2> "$LAB_DIR/load-new.err" &
  LOAD_NEW=$!
  ip netns exec "$C" "$py" "$ROOT/tests/lab/http_load.py" "http://$VIP/index.html" --concurrency 20 \
    --seconds "$seconds" --keepalive > "$LAB_DIR/load-ka.json" 2> "$LAB_DIR/load-ka.err" &
  LOAD_KA=$!
  LOAD_DL=()
  for d in 1 2 3 4; do
    ip netns exec "$C" curl -sS --max-time 120 --limit-rate 2M -o "$LAB_DIR/dl$d.bin" "http://$VIP/big.bin" \
      2> "$LAB_DIR/dl$d.err" &
    LOAD_DL+=($!)
  done
}

load_wait() {
  local p
  for p in "${LOAD_DL[@]}"; do wait "$p" || true; done
  wait "$LOAD_NEW" || fail "load client: $(cat "$LAB_DIR/load-new.err")"
  wait "$LOAD_KA" || fail "load client: $(cat "$LAB_DIR/load-ka.err")"
}

load_check() {
  local what=$1 more=${2:-} kind j d got
  for kind in new ka; do
    j="$LAB_DIR/load-$kind.json"
    say "requests during $what ($([ $kind = new ] && echo 'a connection per request, 50 clients' || echo 'keep-alive, 20 clients')): $(lab_json "$j" '"started={started} completed={completed} failed={failed} {failures} slowest={slowest_ms} ms".format(**s)')"
    [ "$(lab_json "$j" 's["failed"] == 0 and s["completed"] == s["started"] and s["completed"] > 1000')" = True ] \
      || fail "requests failed or never finished during $what: $(cat "$j") $more"
  done
  for d in 1 2 3 4; do
    got=$(sha256sum "$LAB_DIR/dl$d.bin" 2>/dev/null | cut -d' ' -f1)
    say "download $d: sha256 $got $([ "$got" = "$LOAD_WANT" ] && echo '= the file' || echo "≠ the file's $LOAD_WANT")"
    [ "$got" = "$LOAD_WANT" ] || fail "download $d is damaged or incomplete: $(cat "$LAB_DIR/dl$d.err")"
  done
}
