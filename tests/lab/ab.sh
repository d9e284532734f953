# shellcheck shell=bash
# ab in the lab's client namespace, checked. Sourced by the lab tests after
# lab.sh; uses the test's `fail`, C (client namespace) and LAB_DIR.
#
#   ab_run LABEL URL N C [AB_ARGS...]
# runs `ab -n N -c C` (a 30 s socket timeout, ARGS such as -k added), prints
# "LABEL: complete=… failed=… non2xx=… [keep-alive=…]" and ab's rate, and
# fails unless all N requests completed, none failed and all were 2xx.
ab_run() {
  local label=$1 url=$2 n=$3 c=$4 out complete failed non2xx keepalive
  shift 4
  out=$(mktemp "$LAB_DIR/ab.XXXXXX")
  ip netns exec "$C" ab -q -n "$n" -c "$c" -s 30 "$@" "$url" > "$out" 2>&1 || fail "$label: ab failed: $(tail -5 "$out")"
  complete=$(awk '/^Complete requests:/ {print $3}' "$out")
  failed=$(awk '/^Failed requests:/ {print $3}' "$out")
  non2xx=$(awk '/^Non-2xx responses:/ {print $3}' "$out")
  keepalive=$(awk '/^Keep-Alive requests:/ {print $3}' "$out")
  echo "$label: complete=$complete failed=$failed non2xx=${non2xx:-0}${keepalive:+ keep-alive=$keepalive}"
  grep -E "^Requests per second|^Time per request.*\(mean\)$" "$out" | sed "s/^/$label:   /"
  [ "$complete" = "$n" ] || fail "$label: only $complete of $n requests completed"
  [ "$failed" = 0 ] || fail "$label: $failed failed requests"
  [ -z "${non2xx:-}" ] || fail "$label: $non2xx non-2xx responses"
  # shellcheck disable=SC2034  # read by the caller
  AB_KEEPALIVE=${keepalive:-0}
}
