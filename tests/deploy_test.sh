#!/usr/bin/env bash
# Deployment scripts: every shell script passes shellcheck; baremetal.sh
# does what it says in dry-run and refuses bad input; `make install` puts
# binaries, units and example configs where the units expect them.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
fail() { echo "FAIL deploy: $*"; exit 1; }

mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck -S warning "${scripts[@]}" || fail "shellcheck"
echo "deploy: shellcheck clean on ${#scripts[@]} scripts"

out=$(bash deploy/baremetal.sh --dry-run hugepages 8 1G) || fail "dry-run hugepages"
grep -q "echo 8 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages" <<<"$out" || fail "1G hugepages: $out"
nics=$(mktemp)
printf '# uplinks\n0000:03:00.0\n\n0000:03:00.1  # second port\n' > "$nics"
out=$(bash deploy/baremetal.sh --dry-run bind-file "$nics") || fail "dry-run bind-file"
rm -f "$nics"
[ "$(grep -c 'dpdk-devbind.py --bind=vfio-pci 0000:03:00.[01]$' <<<"$out")" = 2 ] || fail "bind-file: $out"
for bad in "hugepages many" "hugepages 8 3M" "bind 03:00" "bind-file /nonexistent"; do
  # shellcheck disable=SC2086
  if bash deploy/baremetal.sh --dry-run $bad >/dev/null 2>&1; then fail "accepted: $bad"; fi
done
echo "deploy: baremetal.sh dry-runs and refusals ok"

# TRex is not installable here: its profiles must at least compile.
pyc=$(mktemp -d)
PYTHONPYCACHEPREFIX=$pyc python3 -m py_compile perf/trex/*.py || fail "perf/trex profiles do not compile"
rm -rf "$pyc"
echo "deploy: perf/trex profiles compile ($(ls perf/trex/*.py | wc -l) files)"

dest=$(mktemp -d)
make -s install DESTDIR="$dest" PREFIX=/usr/local >/dev/null || fail "make install"
for f in usr/local/bin/ringlb usr/local/bin/ringlb-agent usr/local/lib/ringlb/baremetal.sh \
         lib/systemd/system/ringlb.service lib/systemd/system/ringlb-agent.service \
         lib/systemd/system/ringlb-baremetal.service etc/ringlb/ringlb.yaml etc/ringlb/agent.yaml \
         etc/ringlb/cluster.key; do
  [ -e "$dest/$f" ] || fail "make install did not create /$f"
done
[ "$(stat -c %a "$dest/etc/ringlb/cluster.key")" = 600 ] || fail "the installed cluster key is not mode 0600"
# The agent's example config with the installed key, read as the unit
# reads it (a credential): the key passes the agent's checks.
mkdir -p "$dest/cred" && cp -p "$dest/etc/ringlb/cluster.key" "$dest/cred/"
sed -i "s|^listen: .*|listen: 127.0.0.1:7400|; s|^  - 198.18.1.11:7400|  - 127.0.0.1:7400|; s|^status_file: .*|status_file: $dest/agent.status|" \
  "$dest/etc/ringlb/agent.yaml"
out=$(CREDENTIALS_DIRECTORY="$dest/cred" "$dest/usr/local/bin/ringlb-agent" status -c "$dest/etc/ringlb/agent.yaml" 2>&1 || true)
echo "$out" | grep -q "is the agent running" || fail "the installed agent config or key is refused: $out"
chmod 644 "$dest/cred/cluster.key"
out=$(CREDENTIALS_DIRECTORY="$dest/cred" "$dest/usr/local/bin/ringlb-agent" status -c "$dest/etc/ringlb/agent.yaml" 2>&1 || true)
echo "$out" | grep -q "mode 0644" || fail "a key others can read was not refused: $out"
echo "deploy: installed key is 0600 and accepted; a 0644 key is refused"

# The units reference exactly the installed paths.
for p in $(grep -ho '/usr/local/[a-z/.-]*' deploy/systemd/*.service | sort -u); do
  [ -e "$dest$p" ] || fail "a unit references $p, which make install does not create"
done
"$dest/usr/local/bin/ringlb" check -c "$dest/etc/ringlb/ringlb.yaml" >/dev/null || fail "installed example config does not validate"
rm -rf "$dest"
echo "PASS deploy"
