#!/usr/bin/env bash
# A lab test that fails midway (appliance, nginx and namespaces all up) must
# still remove its namespaces and stop its DPDK process and servers.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LAB="rlbclean$$"
LAB=$LAB LAB_FORCE_FAIL=1 bash "$ROOT/tests/lab/lab_test.sh" dsr > /tmp/ringlb-cleanup-$$.log 2>&1
rc=$?
grep -q "forced failure" /tmp/ringlb-cleanup-$$.log || { echo "FAIL cleanup: the forced failure did not happen"; cat /tmp/ringlb-cleanup-$$.log; exit 1; }
rm -f /tmp/ringlb-cleanup-$$.log
[ "$rc" -ne 0 ] || { echo "FAIL cleanup: the failing lab test exited 0"; exit 1; }
left=$(ip netns list | grep -c "^${LAB}-" || true)
[ "$left" = 0 ] || { echo "FAIL cleanup: $left namespaces of $LAB left"; exit 1; }
if pgrep -f "ringlb-lab-dsr.*nginx|ringlb run -c $ROOT/deploy/lab/dsr.yaml" >/dev/null; then
  echo "FAIL cleanup: a ringlb or nginx process of the failed test is still running"; exit 1
fi
if compgen -G "/dev/hugepages/rtemap*" >/dev/null; then echo "FAIL cleanup: hugepage files left"; exit 1; fi
echo "PASS lab-cleanup: failed lab test (exit $rc) left no namespaces, processes or hugepage files"
