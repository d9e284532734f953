#!/usr/bin/env bash
# A lab test that fails midway (appliances, nginx, router and namespaces all
# up) must still remove its namespaces and stop its DPDK processes and
# servers: the single-appliance lab, the three-appliance trunk lab and the
# two-appliance failover lab.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
check() {
  local name=$1 script=$2 mode=$3 procs=$4
  local lab="rlbclean$$$name" log=/tmp/ringlb-cleanup-$$.log rc
  LAB=$lab LAB_FORCE_FAIL=1 bash "$ROOT/tests/lab/$script" "$mode" > "$log" 2>&1
  rc=$?
  grep -q "forced failure" "$log" || { echo "FAIL cleanup ($name): the forced failure did not happen"; cat "$log"; exit 1; }
  rm -f "$log"
  [ "$rc" -ne 0 ] || { echo "FAIL cleanup ($name): the failing lab test exited 0"; exit 1; }
  left=$(ip netns list | grep -c "^${lab}-" || true)
  [ "$left" = 0 ] || { echo "FAIL cleanup ($name): $left namespaces of $lab left"; exit 1; }
  if pgrep -f "$procs" >/dev/null; then
    echo "FAIL cleanup ($name): a ringlb or nginx process of the failed test is still running"; exit 1
  fi
  if compgen -G "/dev/hugepages/rtemap*" >/dev/null; then echo "FAIL cleanup ($name): hugepage files left"; exit 1; fi
  echo "PASS lab-cleanup ($name): failed lab test (exit $rc) left no namespaces, processes or hugepage files"
}
check single lab_test.sh dsr "ringlb-lab-dsr.*nginx|ringlb run -c $ROOT/deploy/lab/dsr.yaml"
check trunk cluster_test.sh dsr "ringlb-cluster-dsr"
check failover failover_test.sh dsr "ringlb-failover-dsr"
