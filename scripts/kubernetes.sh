#!/usr/bin/env bash
# Build Kubernetes' own components for the lab and the tests, at the one release pinned in
# integration/kubernetes/go.mod, into a cache outside the repo. Idempotent: with a warm cache
# (same go.mod/go.sum, every binary present) it does nothing.
#
#   bash scripts/kubernetes.sh            build what is missing, print the cache's bin directory
#   bash scripts/kubernetes.sh --print    only print the bin directory (exit 1 when not built)
#
# TORTIE_K8S_CACHE (default /var/cache/tortie) is where k8s-<version>/bin/ is made.
set -euo pipefail
cd "$(dirname "$0")/../integration/kubernetes"

version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2}' go.mod)
[ -n "$version" ] || { echo "error: no k8s.io/kubernetes in integration/kubernetes/go.mod" >&2; exit 1; }
cache=${TORTIE_K8S_CACHE:-/var/cache/tortie}/k8s-$version
bin=$cache/bin
stamp=$cache/stamp
want=$(cat go.mod go.sum | sha256sum | cut -d' ' -f1)

COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
BINARIES=("${COMMANDS[@]}" agnhost ginkgo e2e.test)

built() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
  for b in "${BINARIES[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

if [ "${1:-}" = "--print" ]; then
  built && { echo "$bin"; exit 0; }
  echo "error: Kubernetes $version is not built; run: bash scripts/kubernetes.sh" >&2
  exit 1
fi

if built; then
  echo ">>> Kubernetes $version: up to date in $bin"
  exit 0
fi

# The machine's Go toolchain (/usr/local/go where it is not on PATH); go.mod's `go` line
# makes an older one fetch the toolchain it needs from the Go module proxy.
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "error: a Go toolchain is needed to build Kubernetes (go not on PATH)" >&2; exit 1; }
mkdir -p "$bin"
rm -f "$stamp"
minor=${version#v1.}; minor=${minor%%.*}
# What upstream's build stamps into every binary: the version kubelet registers, kubectl prints
# and the e2e framework reads.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

t0=$(date +%s)
echo ">>> Kubernetes $version: downloading modules"
go mod download
t1=$(date +%s)
echo ">>> Kubernetes $version: building ${COMMANDS[*]} agnhost ginkgo ($(nproc) cores)"
pkgs=()
for c in "${COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
# ginkgo: the CLI that runs e2e.test in parallel processes (the version e2e.test links)
go build -trimpath -ldflags "$ldflags" -o "$bin/" "${pkgs[@]}" k8s.io/kubernetes/test/images/agnhost \
  github.com/onsi/ginkgo/v2/ginkgo
t2=$(date +%s)
echo ">>> Kubernetes $version: building e2e.test"
go test -c -trimpath -ldflags "$ldflags" -o "$bin/e2e.test" k8s.io/kubernetes/test/e2e
t3=$(date +%s)
echo "$want" > "$stamp"
echo ">>> Kubernetes $version built in $((t3 - t0)) s (modules $((t1 - t0)) s, commands $((t2 - t1)) s, e2e.test $((t3 - t2)) s):"
for b in "${BINARIES[@]}"; do
  printf '    %-26s %6.1f MB\n' "$b" "$(( $(stat -c %s "$bin/$b") / 104858 ))e-1"
done
echo "$bin"
