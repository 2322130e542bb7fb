#!/usr/bin/env bash
# Install everything Tortie needs on a Debian 12 machine (run as root):
# the Debian packages, then a virtualenv in .venv with Tortie and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  etcd-server etcd-client   # the datastore (tests and the lab run their own instances)
  nftables iproute2         # the dataplane
  python3-nftables          # the nftables project's Python binding (the policy agent applies with it)
  containernetworking-plugins  # reference CNI plugins: portmap/bandwidth chains, benchmarks
  iputils-ping procps       # ping and sysctl inside the lab
  openssl                   # TLS material for the etcd TLS tests
  bird2                     # an outside BGP router (lab peer bird, route reflector tests)
  iperf3 tcpdump            # throughput and underlay captures in the lab
  containerd runc busybox-static  # the lab's CRI runtime mode (pause image from busybox)
  shellcheck                # integration/kind/run.sh is checked in the tests
  curl netcat-openbsd       # in the lab's agnhost image (the upstream e2e helpers exec them)
  python3 python3-venv python3-dev
)

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (sudo bash scripts/install.sh)" >&2
  exit 1
fi

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo ">>> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts an etcd service on install where systemd runs; Tortie never uses it.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "error: Python 3.11 or newer is needed" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if [ ! -x .venv/bin/python ]; then
  echo ">>> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo ">>> installing tortie into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# the venv does not see the system's site-packages: give it the nftables binding alone
# (a pure-Python module over libnftables, from python3-nftables)
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/nftables "$SITE/nftables"
.venv/bin/python -c 'import nftables' || { echo "error: the nftables binding does not import" >&2; exit 1; }
# Kubernetes' own components for `tortie lab up --kubernetes` and the tests (a no-op when built)
bash scripts/kubernetes.sh
echo ">>> done: $(.venv/bin/tortie version)"
