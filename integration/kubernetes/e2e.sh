#!/usr/bin/env bash
# Run the upstream Kubernetes e2e suite (e2e.test of the pinned release) against a lab
# brought up with `tortie lab up --kubernetes`, and print ginkgo's summary.
#
#   integration/kubernetes/e2e.sh [--name L] [--focus REGEX] [--skip REGEX] [--procs N]
#                                 [--report-dir DIR] [-- EXTRA e2e.test ARGS]
#
# Defaults: the NetworkPolicy suite (\[sig-network\] Netpol) and the pod-to-pod
# connectivity checks (Networking Granular Checks: Pods), skipping [Feature:SCTPConnectivity]
# (this kernel has no sctp module; the SCTP *policy* cases still run), [Disruptive] and
# [Serial] cases.
set -euo pipefail
cd "$(dirname "$0")/../.."

name=lab
focus='\[sig-network\] Netpol|Networking Granular Checks: Pods'
skip='\[Feature:SCTPConnectivity\]|\[Disruptive\]|\[Serial\]'
procs=1
report_dir=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --focus) focus=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --procs) procs=$2; shift 2 ;;
    --report-dir) report_dir=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

tortie=.venv/bin/tortie
[ -x "$tortie" ] || { echo "error: run 'sudo bash scripts/install.sh' first" >&2; exit 1; }
status=$("$tortie" lab status --name "$name") || exit 1
kubeconfig=$(awk '$1 == "kubernetes" {print $4}' <<<"$status")
[ -n "$kubeconfig" ] || { echo "error: lab $name runs no Kubernetes (tortie lab up --kubernetes)" >&2; exit 1; }
fabric=$(awk '$1 == "fabric" {print $2}' <<<"$status")
bin=$(bash scripts/kubernetes.sh --print)
report_dir=${report_dir:-$(dirname "$kubeconfig")/e2e-report}
mkdir -p "$report_dir"

args=(--provider=local "--kubeconfig=$kubeconfig" "--kubectl-path=$bin/kubectl"
      "--ginkgo.focus=$focus" "--ginkgo.skip=$skip" --ginkgo.no-color
      "--report-dir=$report_dir" --disable-log-dump --allowed-not-ready-nodes=0
      --ginkgo.timeout=4h)
echo ">>> e2e.test (Kubernetes $("$bin/e2e.test" --version 2>/dev/null | head -1 || true)) on lab $name: focus '$focus', skip '$skip'"
start=$(date +%s)
set +e
if [ "$procs" -gt 1 ]; then  # parallel processes need the ginkgo CLI to drive them
  run=("$bin/ginkgo" "--procs=$procs" --no-color "$bin/e2e.test" --)
else
  run=("$bin/e2e.test")
fi
ip netns exec "$fabric" env PATH="$bin:$PATH" "${run[@]}" "${args[@]}" "${extra[@]}" \
  > "$report_dir/e2e.log" 2>&1
rc=$?
set -e
# ginkgo's closing lines: "Ran X of Y Specs in Z seconds", "SUCCESS!/FAIL! -- N Passed | ..."
grep -E '^\s*\[(FAIL|PANICKED)\]|^Ran [0-9]+ of [0-9]+ Specs|(SUCCESS|FAIL)! -- [0-9]+ Passed' \
  "$report_dir/e2e.log" | sed 's/^/    /' || true
echo ">>> e2e.test exited $rc after $(( $(date +%s) - start )) s; full log: $report_dir/e2e.log"
exit $rc
