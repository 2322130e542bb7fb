#!/usr/bin/env bash
# Install Tortie into a kind cluster and check it end to end.  This is the path for real
# clusters: the same image, manifests and conflist.  See integration/kind/README.md.
#
#   integration/kind/run.sh            # create the cluster (or reuse it), install, test
#   KEEP_CLUSTER=1 integration/kind/run.sh   # leave the cluster running afterwards
#
# Needs: docker (a running engine), kind, kubectl; python3 with this repository's
# dependencies (default: .venv/bin/python) to read the seed articles' examples.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CLUSTER=${KIND_CLUSTER:-tortie}
IMAGE=${TORTIE_IMAGE:-tortie:dev}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
TIMEOUT=${TIMEOUT:-300s}
E2E_NS=tortie-e2e
ETCD_IP=10.96.232.136       # manifests/10-etcd.yaml: the Service's clusterIP
E2E_PREFIX=10.245.          # resources/e2e-ippool.yaml
CREATED=0

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

kc() { kubectl --context "kind-$CLUSTER" "$@"; }

# the tortie CLI, run inside the control-plane node's tortie-node pod (it has the etcd
# endpoint in its environment; the control plane stays up while a worker is stopped)
TORTIE_POD=
tortie() { kc -n kube-system exec -i "$TORTIE_POD" -c tortie-node -- tortie "$@"; }
find_tortie_pod() {
    local cp
    cp=$(kc get nodes -l node-role.kubernetes.io/control-plane \
        -o jsonpath='{.items[0].metadata.name}')
    TORTIE_POD=$(kc -n kube-system get pods -l app.kubernetes.io/name=tortie-node \
        --field-selector "spec.nodeName=$cp" -o jsonpath='{.items[0].metadata.name}')
    [[ -n $TORTIE_POD ]] || fail "no tortie-node pod on the control-plane node $cp"
}

STOPPED_NODE=

# whether `tortie ipam check` lists the address (as allocated without an endpoint)
ipam_lists() {
    local out
    out=$(tortie ipam check 2>&1 || true)   # exits non-zero when it finds a leak
    grep -qwF "$1" <<<"$out"
}
ipam_forgot() { ! ipam_lists "$1"; }

cleanup() {
    local rc=$?
    if [[ -n $STOPPED_NODE ]]; then docker start "$STOPPED_NODE" >/dev/null || true; fi
    if [[ $rc -ne 0 ]]; then
        log "diagnostics (exit $rc)"
        kc get pods -A -o wide || true
        kc -n kube-system logs ds/tortie-node -c tortie-node --tail=50 || true
        kc -n kube-system logs deploy/tortie-kube-controllers --tail=50 || true
    fi
    if [[ $CREATED -eq 1 && $KEEP_CLUSTER != 1 ]]; then
        kind delete cluster --name "$CLUSTER" || true
    fi
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed"; }

# retry CMD... until it succeeds (every 2 s, up to $1 seconds)
retry() {
    local limit=$1 waited=0
    shift
    until "$@"; do
        waited=$((waited + 2))
        [[ $waited -ge $limit ]] && return 1
        sleep 2
    done
}

# etcd's CA, its server certificate (SAN: the Service's address) and one client certificate
# for tortie-node and tortie-kube-controllers (lab/pki.py), as the two Secrets the manifests
# mount. A reused cluster keeps the ones it has (its etcd runs with them).
etcd_secrets() {
    if kc -n kube-system get secret tortie-etcd-server tortie-etcd-client >/dev/null 2>&1; then
        echo "reusing the etcd certificates"
        return
    fi
    local dir
    dir=$(mktemp -d)
    PYTHONPATH=$REPO "$PYTHON" - "$dir" "$ETCD_IP" <<'EOF'
import sys
from pathlib import Path

from lab.pki import Pki

pki = Pki(Path(sys.argv[1]), ca_name="tortie-etcd-ca")
pki.issue("server", "tortie-etcd", ips=(sys.argv[2], "127.0.0.1"), dns=("localhost",),
          server=True, client=True)
pki.issue("client", "tortie")
EOF
    local who
    for who in server client; do
        kc -n kube-system create secret generic "tortie-etcd-$who" --from-file="$dir/ca.crt" \
            --from-file="$dir/$who.crt" --from-file="$dir/$who.key" --dry-run=client -o yaml \
            | kc apply -f -
    done
    rm -rf "$dir"
}

seed_policies() {
    # the GlobalNetworkPolicies of seed 003 (automatic host endpoints), verbatim
    PYTHONPATH=$REPO "$PYTHON" - <<'EOF'
from lab.seeds import APPLIES, EXAMPLES

for e in EXAMPLES:
    if (e.seed == "003" and e.outcome == APPLIES
            and any(x in ("globalnetworkpolicy/ingress-k8s-masters",
                          "globalnetworkpolicy/ingress-k8s-workers") for x in e.expect)):
        print("---")
        print(e.text())
EOF
}

main() {
    need docker
    need kind
    need kubectl
    [[ -x $PYTHON ]] || PYTHON=python3

    log "kind cluster $CLUSTER"
    local clusters
    clusters=$(kind get clusters 2>/dev/null || true)
    if grep -qx "$CLUSTER" <<<"$clusters"; then
        echo "reusing the existing cluster"
    else
        kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml"
        CREATED=1
    fi

    log "image $IMAGE"
    docker build -f "$HERE/Dockerfile" -t "$IMAGE" "$REPO"
    kind load docker-image "$IMAGE" --name "$CLUSTER"

    log "etcd (TLS, client certificates), tortie-node, tortie-kube-controllers"
    etcd_secrets
    kc apply -f "$HERE/manifests/"
    kc -n kube-system rollout status deploy/tortie-etcd --timeout="$TIMEOUT"
    kc -n kube-system rollout status ds/tortie-node --timeout="$TIMEOUT"
    find_tortie_pod
    tortie apply -f - <"$HERE/resources/default-ippool.yaml"
    tortie apply -f - <"$HERE/resources/e2e-ippool.yaml"
    kc -n kube-system rollout status deploy/tortie-kube-controllers --timeout="$TIMEOUT"
    kc wait --for=condition=Ready nodes --all --timeout="$TIMEOUT"
    kc -n kube-system rollout status deploy/coredns --timeout="$TIMEOUT"
    tortie get nodes -o wide

    log "pods in an annotated namespace get addresses from its pool"
    kc apply -f "$HERE/e2e/workloads.yaml"
    kc annotate --overwrite namespace "$E2E_NS" \
        'cni.projectcalico.org/ipv4pools=["e2e-pool"]'
    kc -n "$E2E_NS" rollout status deploy/web --timeout="$TIMEOUT"
    local pods ips nodes
    pods=$(kc -n "$E2E_NS" get pods -l app=web -o jsonpath='{.items[*].metadata.name}')
    ips=$(kc -n "$E2E_NS" get pods -l app=web -o jsonpath='{.items[*].status.podIP}')
    nodes=$(kc -n "$E2E_NS" get pods -l app=web -o jsonpath='{.items[*].spec.nodeName}')
    read -r pod_a pod_b <<<"$pods"
    read -r ip_a ip_b <<<"$ips"
    read -r node_a node_b <<<"$nodes"
    echo "$pod_a $ip_a on $node_a; $pod_b $ip_b on $node_b"
    [[ $node_a != "$node_b" ]] || fail "both web pods are on $node_a"
    for ip in $ip_a $ip_b; do
        [[ $ip == "$E2E_PREFIX"* ]] || fail "pod address $ip is not from e2e-pool"
    done
    tortie get workloadendpoints -n "$E2E_NS" -o wide
    # coredns (not annotated) got its address from the default pool
    local dns_ip
    dns_ip=$(kc -n kube-system get pods -l k8s-app=kube-dns -o jsonpath='{.items[0].status.podIP}')
    [[ $dns_ip == 10.244.* ]] || fail "coredns address $dns_ip is not from the default pool"

    log "cross-node traffic"
    reach() { kc -n "$E2E_NS" exec "$1" -- wget -q -T 3 -O /dev/null "http://$2:8080/"; }
    blocked() { ! reach "$@"; }
    retry 30 reach "$pod_a" "$ip_b" || fail "$pod_a cannot reach $ip_b"
    retry 30 reach "$pod_b" "$ip_a" || fail "$pod_b cannot reach $ip_a"

    log "Kubernetes NetworkPolicy (through tortie-kube-controllers)"
    kc apply -f "$HERE/e2e/deny-ingress.yaml"
    retry 30 blocked "$pod_a" "$ip_b" || fail "deny-ingress did not isolate $pod_b"
    tortie get k8snetworkpolicies -n "$E2E_NS"
    kc apply -f "$HERE/e2e/allow-web.yaml"
    retry 30 reach "$pod_a" "$ip_b" || fail "allow-web did not let $pod_a in"
    kc -n "$E2E_NS" delete networkpolicy deny-ingress allow-web

    log "seed 003: automatic host endpoints and the node policies"
    tortie patch kubecontrollersconfiguration default \
        --patch='{"spec": {"controllers": {"node": {"hostEndpoint": {"autoCreate": "Enabled"}}}}}'
    local node
    for node in $(kc get nodes -o jsonpath='{.items[*].metadata.name}'); do
        retry 30 tortie get hostendpoint "$node-auto-hep" >/dev/null \
            || fail "no automatic host endpoint for $node"
    done
    tortie get hostendpoints -o wide
    kc label nodes --all --overwrite kubernetes-host=
    kc label nodes -l node-role.kubernetes.io/control-plane --overwrite \
        node-role.kubernetes.io/master=
    for node in $(kc get nodes -l '!node-role.kubernetes.io/control-plane' \
            -o jsonpath='{.items[*].metadata.name}'); do
        kc label node "$node" --overwrite kubernetes-worker=
    done
    seed_policies | tortie apply -f -
    sleep 5
    kc get nodes >/dev/null || fail "the API server is unreachable with the node policies"
    retry 30 reach "$pod_a" "$ip_b" || fail "pod traffic broke with the node policies"

    log "leaked address GC: a pod deleted while its node is down"
    tortie patch kubecontrollersconfiguration default \
        --patch='{"spec": {"controllers": {"node": {"leakGracePeriod": "20s"}}}}'
    docker stop "$node_b" >/dev/null   # a worker: the control plane keeps running
    STOPPED_NODE=$node_b
    kc -n "$E2E_NS" delete pod "$pod_b" --force --grace-period=0
    # its endpoint goes at once (kube-controllers); its address after the grace period
    retry 60 ipam_lists "$ip_b" || fail "$ip_b did not show up as an address without endpoint"
    retry 120 ipam_forgot "$ip_b" || fail "the leaked address $ip_b was not released"
    docker start "$node_b" >/dev/null
    STOPPED_NODE=
    kc wait --for=condition=Ready nodes --all --timeout="$TIMEOUT"

    log "PASS"
}

main "$@"
