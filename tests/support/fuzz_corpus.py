"""Valid resource documents and hypothesis strategies that mutate them, for fuzzing the
``tortie apply`` path (tests/unit/test_apply_fuzz.py, tests/integration/test_apply_fuzz.py).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from datastore.documents import parse_text
from lab.seeds import APPLIES, EXAMPLES, SEEDS_DIR

#: Examples per property; raise it for a longer campaign (TORTIE_FUZZ_EXAMPLES=5000).
EXAMPLES_PER_TEST = int(os.environ.get("TORTIE_FUZZ_EXAMPLES", "200"))

FUZZ = settings(max_examples=EXAMPLES_PER_TEST, deadline=None, database=None,
                derandomize=os.environ.get("TORTIE_FUZZ_RANDOM") is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

V3 = "projectcalico.org/v3"

CORPUS_TEXT = f"""\
apiVersion: {V3}
kind: IPPool
metadata:
  name: pool-a
  labels: {{zone: a}}
spec:
  cidr: 10.10.0.0/16
  blockSize: 28
  ipipMode: CrossSubnet
  natOutgoing: true
  nodeSelector: "zone == 'a'"
---
apiVersion: {V3}
kind: GlobalNetworkPolicy
metadata:
  name: allow-web
spec:
  order: 100.5
  selector: role == 'web' && has(app)
  types: [Ingress, Egress]
  ingress:
  - action: Allow
    protocol: TCP
    source:
      nets: [10.0.0.0/8, "fd00::/64"]
      selector: app in {{'a', 'b'}}
    destination:
      ports: [80, "8000:8080", http]
  - action: Deny
    protocol: ICMP
    icmp: {{type: 8, code: 0}}
  egress:
  - action: Pass
    notProtocol: UDP
    destination:
      notNets: [192.168.0.0/16]
      namespaceSelector: global()
---
apiVersion: {V3}
kind: NetworkPolicy
metadata:
  name: np-db
  namespace: shop
spec:
  order: 10
  selector: app == 'db'
  ingress:
  - action: Allow
    protocol: 6
    source:
      serviceAccounts: {{names: [api]}}
    destination:
      ports: [5432]
---
apiVersion: {V3}
kind: HostEndpoint
metadata:
  name: node1-eth0
  labels: {{role: edge}}
spec:
  node: node1
  interfaceName: eth0
  expectedIPs: [192.0.2.10]
  profiles: [edge]
  ports:
  - name: ssh
    port: 22
    protocol: TCP
---
apiVersion: {V3}
kind: BGPPeer
metadata:
  name: tor
spec:
  peerIP: 192.0.2.1
  asNumber: 64513
  nodeSelector: rack == 'r1'
---
apiVersion: {V3}
kind: BGPConfiguration
metadata:
  name: default
spec:
  asNumber: 64512
  nodeToNodeMeshEnabled: false
  logSeverityScreen: Info
---
apiVersion: {V3}
kind: GlobalNetworkSet
metadata:
  name: blocked
  labels: {{feed: threats}}
spec:
  nets: [198.51.100.0/24, 203.0.113.7]
---
apiVersion: {V3}
kind: NetworkSet
metadata:
  name: partners
  namespace: shop
spec:
  nets: [100.64.0.0/10]
---
apiVersion: {V3}
kind: Profile
metadata:
  name: edge
spec:
  labelsToApply: {{role: edge}}
  ingress: [{{action: Allow}}]
---
apiVersion: {V3}
kind: FelixConfiguration
metadata:
  name: default
spec:
  failsafeInboundHostPorts: [{{protocol: tcp, port: 22}}]
---
apiVersion: {V3}
kind: Node
metadata:
  name: node1
spec:
  bgp: {{ipv4Address: 192.0.2.10/24, asNumber: 64515}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {{team: web}}
  annotations: {{cni.projectcalico.org/ipv4pools: '["pool-a"]'}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: shop
spec:
  podSelector: {{}}
  policyTypes: [Ingress]
---
apiVersion: v1
kind: policy
metadata:
  name: v1-policy
spec:
  order: 5
  selector: role == 'x'
  ingress:
  - action: allow
    source: {{net: 10.1.0.0/16, tag: web}}
---
apiVersion: v1
kind: profile
metadata:
  name: v1-profile
  tags: [a, b]
  labels: {{x: y}}
spec:
  egress: [{{action: next-tier}}]
---
apiVersion: v1
kind: ipPool
metadata:
  cidr: 10.20.0.0/16
spec:
  nat-outgoing: true
"""


def corpus_texts() -> list[str]:
    """Documents that apply: the built-in ones above and the seeds' examples."""
    texts = [t for t in CORPUS_TEXT.split("---\n") if t.strip()]
    if SEEDS_DIR.is_dir():
        texts += [ex.text() for ex in EXAMPLES if ex.outcome == APPLIES]
    return texts


CORPUS = corpus_texts()
#: Every document of the corpus, parsed.
CORPUS_DATA = [d.data for text in CORPUS for d in parse_text(text, "corpus").documents]

# --- values ------------------------------------------------------------------------------------

#: Stands for an integer of 5000 digits (more than Python converts from text), replaced in
#: the rendered text: the YAML and JSON writers cannot write such a number themselves.
BIG_INT = "__big_int__"
BIG_INT_TEXT = "9" * 5000

#: Strings a mutation likes to put anywhere: YAML specials, selectors, CIDRs, huge ones.
TRICKY_TEXT = st.sampled_from([
    "", " ", "~", "null", "yes", "no", ".nan", ".inf", "-.inf", "0x1F", "0o17", "1_000",
    "190:20:30", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "&a", "*a", "!!binary", "<<",
    "- x", "{a: 1}", "[1, 2]", "'", '"', "\\", "\t", "\u00a0", "\x00", "\ufeff", "é",
    "all()", "has(x)", "a == 'b'", "!", "10.0.0.0/8", "fd00::/64", "10.0.0.0/33", "::",
    "Allow", "Deny", "TCP", "65535", "65536", "-1", "x" * 300, "1" * 5000,
    "projectcalico.org/v3", "IPPool", "GlobalNetworkPolicy", "List", "IPPoolList",
])

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(10 ** 60), max_value=10 ** 60),
    st.just(BIG_INT),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), TRICKY_TEXT,
)

VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=12), TRICKY_TEXT), children, max_size=5),
    ),
    max_leaves=25,
)

# --- mutations of a parsed document ------------------------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        value = value[p]
    return value


@st.composite
def mutated_data(draw: st.DrawFn) -> Any:
    """A corpus document parsed, with a few random changes anywhere in its tree."""
    data = copy.deepcopy(draw(st.sampled_from(CORPUS_DATA)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "insert", "wrap", "duplicate"]))
        if not path or op == "replace":
            new = draw(VALUES)
            if not path:
                data = new
                continue
            _get(data, path[:-1])[path[-1]] = new
            continue
        parent = _get(data, path[:-1])
        key = path[-1]
        if op == "delete":
            del parent[key]
        elif op == "insert":
            target = _get(data, path)
            if isinstance(target, dict):
                target[draw(st.one_of(st.text(max_size=12), TRICKY_TEXT))] = draw(VALUES)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(VALUES))
            else:
                parent[key] = [target, draw(VALUES)]
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"x": parent[key]}]))
        else:
            parent[key] = [parent[key]] * draw(st.integers(2, 4))
    return data


def render(data: Any, how: str) -> str:
    """``data`` as YAML (block or flow) or JSON text; YAML anchors for shared objects."""
    if how == "json":
        return json.dumps(data).replace(f'"{BIG_INT}"', BIG_INT_TEXT)
    text = yaml.safe_dump(data, default_flow_style=(how == "flow"), allow_unicode=True)
    return text.replace(BIG_INT, BIG_INT_TEXT)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """A corpus document's text with characters inserted, deleted or replaced."""
    text = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        pos = draw(st.integers(min_value=0, max_value=len(text)))
        piece = draw(st.one_of(
            st.sampled_from(["&a ", "*a", "!!str ", "!!int ", "!!float ", "!!set ", "!!binary ",
                             "!!omap ", "!!timestamp ", "? ", ": ", "- ", "[", "]", "{", "}",
                             ",", "\n", "\n  ", "\t", "\u00a0", "#", "'", '"', "|", ">", "%",
                             "@", "`", "---\n", "...\n", "<<: *a\n", "\x00", "\ufeff", "9" * 5000,
                             ".nan", ".inf", "1e999"]),
            st.text(max_size=5)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        end = min(len(text), pos + draw(st.integers(min_value=1, max_value=8)))
        if op == "insert":
            text = text[:pos] + piece + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[end:]
        else:
            text = text[:pos] + piece + text[end:]
    return text


@st.composite
def alias_bombs(draw: st.DrawFn) -> str:
    """A document whose aliases multiply: ``fanout ** levels`` copies of its leaf."""
    fanout = draw(st.integers(min_value=2, max_value=12))
    levels = draw(st.integers(min_value=1, max_value=9))
    leaf = draw(st.sampled_from([
        "{apiVersion: projectcalico.org/v3, kind: GlobalNetworkSet, metadata: {name: x}, "
        "spec: {nets: [10.0.0.0/8]}}",
        "x", "[a, b, c]", "{a: {b: {c: d}}}"]))
    top_list = draw(st.booleans())
    lines = [f"- &l0 {leaf}" if top_list else f"l0: &l0 {leaf}"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*l{i - 1}"] * fanout)
        lines.append(f"- &l{i} [{refs}]" if top_list else f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"
