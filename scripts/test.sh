#!/usr/bin/env bash
# Run Tortie's checks: ruff, then the whole test suite (unit and integration; as root).
# The run ends with one "layer <dir>: N passed, M skipped, K failed" line per tests/ directory.
# With CI=true a missing tool fails its tests instead of skipping them (tests/support/tools.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/pytest ]; then
  echo "error: run 'sudo bash scripts/install.sh' first" >&2
  exit 1
fi
bash scripts/kubernetes.sh  # the real-Kubernetes tests need it (a no-op when built)
echo ">>> ruff"
.venv/bin/ruff check .
echo ">>> pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
