"""What matches what: the label/selector index of the policy calculation.

:class:`SelectorIndex` keeps, incrementally:

* every *item* -- workload endpoint, host endpoint, NetworkSet, GlobalNetworkSet, of the whole
  cluster -- with its effective labels (own labels, plus those its profiles apply);
* every selector some policy or profile uses (canonical text, shared, reference-counted), with
  the items it matches; a selector is indexed by a ``(key, value)`` label every match has, so
  a new item or a label change evaluates only the selectors that can match it and read a
  changed key;
* every IP set (a rule selector's addresses, or a named port's ``ip,proto:port`` entries),
  with reference-counted members, so a membership change is O(addresses of that item).

It also notes in :attr:`SelectorIndex.dirty` the local endpoints whose policies may have
changed (their program is rebuilt by :mod:`policyagent.program_assembly`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from datastore.model_endpoints import EndpointPort, HostEndpoint, WorkloadEndpoint
from datastore.model_policy import GlobalNetworkSet, NetworkSet, protocol_name
from datastore.selector import parse
from policyagent.model import PROTOCOL_NAMES, PROTOCOL_NUMBERS, IPSetSpec, ipset_id
from policyagent.selectors import (
    LABEL_NAMESPACE,
    LABEL_ORCHESTRATOR,
    LABEL_SERVICE_ACCOUNT,
)

__all__ = ["IPSetKey", "IndexedItem", "NamedPorts", "SelectorIndex", "TrackedIPSet",
           "TrackedSelector", "cidr", "host_cidr", "ip_set_ids", "protocol_number"]

ItemKind = Literal["workload", "host", "network_set"]
#: An IP set: ``("net", selector)`` (the addresses of the matching items) or ``("port",
#: selector, protocol number, port name)`` (``ip,proto:port`` of the matching endpoints)
IPSetKey = tuple[Any, ...]
#: A pod: (namespace, name)
PodKey = tuple[str, str]
#: Named ports: (name, protocol number) -> port
NamedPorts = dict[tuple[str, int], int]

_ENDPOINT_KINDS = ("workload", "host")
_SCOPE_KEYS = frozenset({LABEL_NAMESPACE, LABEL_ORCHESTRATOR})


@functools.lru_cache(maxsize=1 << 16)
def cidr(text: str) -> str:
    """Canonical CIDR text (cached: the same nets recur in many rules and resyncs)."""
    return str(ipaddress.ip_network(text, strict=False))


@functools.lru_cache(maxsize=1 << 16)
def _address(text: str) -> str:
    """The address of a CIDR (``10.0.0.1/32`` -> ``10.0.0.1``), canonical."""
    return str(ipaddress.ip_interface(text).ip)


def host_cidr(ip: str) -> str:
    """An address as a one-address CIDR."""
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{addr.max_prefixlen}"


def protocol_number(p: str | int | None) -> int | None:
    """A protocol (a name in any case, or a number) as its number."""
    if p is None:
        return None
    if isinstance(p, int):
        return p
    return PROTOCOL_NUMBERS[protocol_name(p) or p]


def ip_set_ids(key: IPSetKey, families: Iterable[int]) -> tuple[str, ...]:
    """The ids of an IP set's per-family sets (see :data:`IPSetKey`)."""
    if key[0] == "net":
        return tuple(ipset_id("s", f, key[1]) for f in families)
    _, canon, proto, name = key
    return tuple(ipset_id("n", f, f"{canon}|{PROTOCOL_NAMES[proto]}:{name}") for f in families)


def _family(member: str) -> int:
    return 6 if ":" in member.partition(",")[0] else 4


def _endpoint_ports(ports: list[EndpointPort] | None) -> NamedPorts | None:
    """An endpoint's named ports; None when it lists none."""
    if not ports:
        return None
    return {(p.name, n): p.port for p in ports
            if (n := protocol_number(p.protocol)) is not None}


class IndexedItem:
    """Anything with labels and addresses: an endpoint (any node) or a network set."""

    __slots__ = ("addrs", "id", "kind", "labels", "local", "matched", "own", "parents",
                 "pod", "ports", "resource")

    def __init__(self, item_id: str, kind: ItemKind) -> None:
        self.id = item_id
        self.kind = kind
        self.own: dict[str, str] = {}
        self.parents: tuple[str, ...] = ()  # profile names
        self.labels: dict[str, str] = {}
        self.addrs: tuple[str, ...] = ()
        self.ports: NamedPorts = {}
        self.local = False
        self.pod: PodKey | None = None
        self.resource: Any = None
        self.matched: set[str] = set()  # canonical selectors matching this item

    @property
    def local_endpoint(self) -> bool:
        return self.local and self.kind in _ENDPOINT_KINDS


class TrackedSelector:
    """One selector in use: what it matches, and the policies and IP sets using it."""

    __slots__ = ("canon", "index", "keys", "match", "members", "policies", "refs", "sets")

    def __init__(self, canon: str,
                 holders: Callable[[tuple[str, str]], int] = lambda kv: 0) -> None:
        s = parse(canon)
        self.canon = canon
        self.match = s.matcher
        self.keys = s.labels_used()
        # a (key, value) every match has: the selector is only tried on items with it. The
        # one fewest items have now (``holders``); on a tie, not a scoping term (namespace,
        # orchestrator: usually the least selective), else the first
        required = s.required_labels()
        self.index: tuple[str, str] | None = min(
            required, key=lambda kv: (holders(kv), kv[0] in _SCOPE_KEYS), default=None)
        self.members: set[str] = set()
        self.sets: list[TrackedIPSet] = []
        self.policies: set[str] = set()  # ids of the policies it selects endpoints for
        self.refs = 0


@dataclass(eq=False)
class TrackedIPSet:
    """One IP set in use, its members counted by how many items contribute each."""

    key: IPSetKey
    sel: TrackedSelector
    ids: dict[int, str]
    proto: int | None = None
    port_name: str | None = None
    refs: int = 0
    contrib: dict[str, tuple[str, ...]] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=lambda: {4: {}, 6: {}})
    specs: dict[int, IPSetSpec] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=lambda: {4, 6})

    @property
    def named(self) -> bool:
        return self.port_name is not None

    def spec(self, family: int) -> IPSetSpec:
        if family in self.dirty or family not in self.specs:
            self.specs[family] = IPSetSpec(
                id=self.ids[family], family=family,
                members=frozenset(self.counts[family]),
                kind="ip_port" if self.named else "net", selector=self.sel.canon,
                named_port=(f"{PROTOCOL_NAMES.get(self.proto or 0, self.proto)}:"
                            f"{self.port_name}" if self.named else ""))
            self.dirty.discard(family)
        return self.specs[family]


class SelectorIndex:
    """Items, the selectors in use and the IP sets built on them, of the whole cluster.

    ``profile_labels(name)``: the labels a profile applies (the calculator knows profiles,
    namespaces and service accounts); when they change, :meth:`relabel_profile_users`."""

    def __init__(self, node_name: str,
                 profile_labels: Callable[[str], dict[str, str]]) -> None:
        self.node_name = node_name
        self._profile_labels = profile_labels
        self.items: dict[str, IndexedItem] = {}
        self.selectors: dict[str, TrackedSelector] = {}  # by canonical text
        # selectors by the (key, value) every match has (TrackedSelector.index), and those
        # with none
        self.selectors_by_label: dict[tuple[str, str], set[TrackedSelector]] = {}
        self._unindexed: set[TrackedSelector] = set()
        self.items_by_label: dict[tuple[str, str], set[str]] = {}
        self._sets: dict[IPSetKey, TrackedIPSet] = {}
        self._set_by_id: dict[str, TrackedIPSet] = {}
        self._profile_users: dict[str, set[str]] = {}  # profile name -> item ids
        self._pod_ports: dict[PodKey, NamedPorts] = {}
        self._pod_users: dict[PodKey, set[str]] = {}  # pod -> workload item ids
        #: local endpoints whose program may have changed since the last model
        self.dirty: set[str] = set()
        #: ids of IP sets whose members may have changed since the last model
        self.dirty_sets: set[str] = set()

    # --- items from resources ----------------------------------------------------------------

    def set_workload(self, item_id: str, wep: WorkloadEndpoint | None) -> None:
        if wep is None:
            self.remove_item(item_id)
            return
        spec = wep.spec
        ns = wep.namespace or "default"
        own = dict(wep.metadata.labels or {})
        own[LABEL_NAMESPACE] = ns
        if spec.orchestrator:
            own[LABEL_ORCHESTRATOR] = spec.orchestrator
        if spec.serviceAccountName:
            own[LABEL_SERVICE_ACCOUNT] = spec.serviceAccountName
        pod = (ns, spec.pod) if spec.pod else None
        self._upsert_item(item_id, "workload", wep, own=own, parents=tuple(spec.profiles or ()),
                          addrs=tuple(cidr(n) for n in spec.ipNetworks or ()),
                          ports=_endpoint_ports(spec.ports), pod=pod,
                          local=bool(spec.node) and spec.node == self.node_name)

    def set_host(self, item_id: str, hep: HostEndpoint | None) -> None:
        if hep is None:
            self.remove_item(item_id)
            return
        spec = hep.spec
        self._upsert_item(item_id, "host", hep, own=dict(hep.metadata.labels or {}),
                          parents=tuple(spec.profiles or ()),
                          addrs=tuple(host_cidr(ip) for ip in spec.expectedIPs or ()),
                          ports=_endpoint_ports(spec.ports), pod=None,
                          local=spec.node == self.node_name)

    def set_network_set(self, item_id: str, net_set: NetworkSet | GlobalNetworkSet | None) -> None:
        if net_set is None:
            self.remove_item(item_id)
            return
        own = dict(net_set.metadata.labels or {})
        parents: tuple[str, ...] = ()
        if isinstance(net_set, NetworkSet):
            ns = net_set.namespace or "default"
            own[LABEL_NAMESPACE] = ns
            parents = (f"kns.{ns}",)
        self._upsert_item(item_id, "network_set", net_set, own=own, parents=parents,
                          addrs=tuple(dict.fromkeys(cidr(n) for n in net_set.spec.nets or ())),
                          ports=None, pod=None, local=False)

    def set_pod_ports(self, pod: PodKey, ports: NamedPorts | None) -> None:
        """A Pod's named ports (``None``: the pod is gone): the named ports of its workload
        endpoints that list none of their own."""
        if ports is None:
            self._pod_ports.pop(pod, None)
            ports = {}
        else:
            self._pod_ports[pod] = ports
        for item_id in self._pod_users.get(pod, ()):
            item = self.items[item_id]
            if item.kind == "workload" and not item.resource.spec.ports and item.ports != ports:
                item.ports = ports
                self._recontribute_item(item)

    def _upsert_item(self, item_id: str, kind: ItemKind, resource: Any, *, own: dict[str, str],
                     parents: tuple[str, ...], addrs: tuple[str, ...],
                     ports: NamedPorts | None, pod: PodKey | None, local: bool) -> None:
        item = self.items.get(item_id)
        if item is not None and item.kind != kind:
            self.remove_item(item_id)
            item = None
        new = item is None
        if item is None:
            item = IndexedItem(item_id, kind)
            self.items[item_id] = item
        if item.parents != parents:
            for p in item.parents:
                self._profile_users.get(p, set()).discard(item_id)
            for p in parents:
                self._profile_users.setdefault(p, set()).add(item_id)
            item.parents = parents
        if item.pod != pod:
            if item.pod is not None:
                self._pod_users.get(item.pod, set()).discard(item_id)
            if pod is not None:
                self._pod_users.setdefault(pod, set()).add(item_id)
            item.pod = pod
        if ports is None and pod is not None:
            ports = self._pod_ports.get(pod)
        ports = ports or {}
        was_local_ep = item.local_endpoint
        item.own, item.resource, item.local = own, resource, local
        labels = self._effective_labels(item)
        if new:
            item.labels, item.addrs, item.ports = labels, addrs, ports
            self._index_labels(item_id, {}, labels)
            for sel in self._candidates(labels):
                if sel.match(labels):
                    self._join(item, sel)
        else:
            if labels != item.labels:
                self._relabel(item, labels)
            if addrs != item.addrs or ports != item.ports:
                item.addrs, item.ports = addrs, ports
                self._recontribute_item(item)
        if item.local_endpoint or was_local_ep:
            self.dirty.add(item_id)

    def remove_item(self, item_id: str) -> None:
        item = self.items.pop(item_id, None)
        if item is None:
            return
        self._index_labels(item_id, item.labels, {})
        for canon in list(item.matched):
            self._leave(item, self.selectors[canon])
        for p in item.parents:
            self._profile_users.get(p, set()).discard(item_id)
        if item.pod is not None:
            self._pod_users.get(item.pod, set()).discard(item_id)
        if item.local_endpoint:
            self.dirty.add(item_id)

    # --- labels ------------------------------------------------------------------------------

    def relabel_profile_users(self, profile: str) -> None:
        """The labels ``profile`` applies may have changed: re-label the items using it."""
        for item_id in list(self._profile_users.get(profile, ())):
            item = self.items[item_id]
            labels = self._effective_labels(item)
            if labels != item.labels:
                self._relabel(item, labels)

    def _index_labels(self, item_id: str, old: dict[str, str], new: dict[str, str]) -> None:
        """Keep ``items_by_label`` (``(key, value)`` -> item ids) up to date."""
        index = self.items_by_label
        for kv in old.items():
            if new.get(kv[0]) != kv[1]:
                ids = index.get(kv)
                if ids is not None:
                    ids.discard(item_id)
                    if not ids:
                        del index[kv]
        for kv in new.items():
            if old.get(kv[0]) != kv[1]:
                index.setdefault(kv, set()).add(item_id)

    def _effective_labels(self, item: IndexedItem) -> dict[str, str]:
        """Own labels over the labels the profiles apply (the first profile wins)."""
        if not item.parents:
            return dict(item.own)
        labels: dict[str, str] = {}
        for p in reversed(item.parents):
            labels.update(self._profile_labels(p))
        labels.update(item.own)
        return labels

    def _relabel(self, item: IndexedItem, labels: dict[str, str]) -> None:
        """New labels: re-evaluate only the selectors that read a changed key."""
        old = item.labels
        item.labels = labels
        self._index_labels(item.id, old, labels)
        changed = {k for k in old.keys() | labels.keys() if old.get(k) != labels.get(k)}
        if not changed:
            return
        # Only selectors reading a changed key can change their verdict. Of those, the ones
        # whose required label the item now has are evaluated (found through the index by
        # the item's labels: far fewer than all readers of, say, a namespace label); the
        # others it no longer matches (it leaves those it was in).
        matched = item.matched
        selectors = self.selectors
        evaluate = [sel for sel in self._unindexed if not sel.keys.isdisjoint(changed)]
        index = self.selectors_by_label
        for kv in labels.items():
            sels = index.get(kv)
            if sels:
                evaluate.extend(sel for sel in sels if not sel.keys.isdisjoint(changed))
        seen = {sel.canon for sel in evaluate}
        leave = [selectors[c] for c in matched if c not in seen
                 and not selectors[c].keys.isdisjoint(changed)]
        for sel in evaluate:
            now = sel.match(labels)
            if now != (sel.canon in matched):
                if now:
                    self._join(item, sel)
                else:
                    self._leave(item, sel)
        for sel in leave:
            self._leave(item, sel)

    def _join(self, item: IndexedItem, sel: TrackedSelector) -> None:
        sel.members.add(item.id)
        item.matched.add(sel.canon)
        for ip_set in sel.sets:
            self._recontribute(ip_set, item)
        if sel.policies and item.local_endpoint:
            self.dirty.add(item.id)

    def _leave(self, item: IndexedItem, sel: TrackedSelector) -> None:
        sel.members.discard(item.id)
        item.matched.discard(sel.canon)
        for ip_set in sel.sets:
            self._recontribute(ip_set, item, gone=True)
        if sel.policies and item.local_endpoint:
            self.dirty.add(item.id)

    # --- IP set members ----------------------------------------------------------------------

    def _recontribute_item(self, item: IndexedItem) -> None:
        for canon in item.matched:
            for ip_set in self.selectors[canon].sets:
                self._recontribute(ip_set, item)

    def _recontribute(self, ip_set: TrackedIPSet, item: IndexedItem, gone: bool = False) -> None:
        """Bring an item's members of one IP set up to date."""
        new: tuple[str, ...] = ()
        if not gone and ip_set.sel.canon in item.matched:
            if ip_set.port_name is None:
                new = item.addrs
            else:
                port = item.ports.get((ip_set.port_name, ip_set.proto or 0))
                if port is not None:
                    proto = PROTOCOL_NAMES[ip_set.proto or 0]
                    new = tuple(f"{_address(a)},{proto}:{port}" for a in item.addrs)
        old = ip_set.contrib.get(item.id, ())
        if old == new:
            return
        for m in old:
            fam = _family(m)
            counts = ip_set.counts[fam]
            if counts[m] == 1:
                del counts[m]
                ip_set.dirty.add(fam)
                self.dirty_sets.add(ip_set.ids[fam])
            else:
                counts[m] -= 1
        for m in new:
            fam = _family(m)
            counts = ip_set.counts[fam]
            if m in counts:
                counts[m] += 1
            else:
                counts[m] = 1
                ip_set.dirty.add(fam)
                self.dirty_sets.add(ip_set.ids[fam])
        if new:
            ip_set.contrib[item.id] = new
        else:
            ip_set.contrib.pop(item.id, None)

    # --- selectors and sets ------------------------------------------------------------------

    def _candidates(self, labels: dict[str, str]) -> list[TrackedSelector]:
        """The selectors that can match ``labels`` (a superset of those that do)."""
        out = list(self._unindexed)
        index = self.selectors_by_label
        for kv in labels.items():
            sels = index.get(kv)
            if sels:
                out.extend(sels)
        return out

    def ref_selector(self, canon: str) -> TrackedSelector:
        """One more user of a selector (canonical text): tracked from the first."""
        sel = self.selectors.get(canon)
        if sel is None:
            by_label = self.items_by_label
            sel = TrackedSelector(canon, lambda kv: len(by_label.get(kv, ())))
            self.selectors[canon] = sel
            if sel.index is None:
                self._unindexed.add(sel)
            else:
                self.selectors_by_label.setdefault(sel.index, set()).add(sel)
            match = sel.match
            items = self.items
            candidates: Iterable[IndexedItem] = items.values() if sel.index is None else [
                items[item_id] for item_id in self.items_by_label.get(sel.index, ())]
            for item in candidates:
                if match(item.labels):
                    sel.members.add(item.id)
                    item.matched.add(canon)
        sel.refs += 1
        return sel

    def unref_selector(self, sel: TrackedSelector) -> None:
        """One user fewer: forgotten after the last."""
        sel.refs -= 1
        if sel.refs > 0:
            return
        del self.selectors[sel.canon]
        if sel.index is None:
            self._unindexed.discard(sel)
        else:
            indexed = self.selectors_by_label[sel.index]
            indexed.discard(sel)
            if not indexed:
                del self.selectors_by_label[sel.index]
        for item_id in sel.members:
            self.items[item_id].matched.discard(sel.canon)

    def ref_set(self, key: IPSetKey) -> None:
        """One more user of an IP set: its members are kept from the first."""
        ip_set = self._sets.get(key)
        if ip_set is None:
            ids = dict(zip((4, 6), ip_set_ids(key, (4, 6)), strict=True))
            if key[0] == "net":
                ip_set = TrackedIPSet(key, self.ref_selector(key[1]), ids)
            else:
                _, canon, proto, name = key
                ip_set = TrackedIPSet(key, self.ref_selector(canon), ids, proto=proto,
                                  port_name=name)
            self._sets[key] = ip_set
            for set_id in ip_set.ids.values():
                self._set_by_id[set_id] = ip_set
                self.dirty_sets.add(set_id)
            ip_set.sel.sets.append(ip_set)
            for item_id in ip_set.sel.members:
                self._recontribute(ip_set, self.items[item_id])
        ip_set.refs += 1

    def unref_set(self, key: IPSetKey) -> None:
        ip_set = self._sets[key]
        ip_set.refs -= 1
        if ip_set.refs > 0:
            return
        del self._sets[key]
        for set_id in ip_set.ids.values():
            del self._set_by_id[set_id]
        ip_set.sel.sets.remove(ip_set)
        self.unref_selector(ip_set.sel)

    def ipset_spec(self, set_id: str, family: int) -> IPSetSpec:
        """The current members of an IP set in use."""
        return self._set_by_id[set_id].spec(family)

    # --- local endpoints ---------------------------------------------------------------------

    def mark_members(self, sel: TrackedSelector) -> None:
        """The policies of ``sel`` changed: the local endpoints it matches need new programs."""
        items = self.items
        for item_id in sel.members:
            if items[item_id].local_endpoint:
                self.dirty.add(item_id)

    def mark_local_endpoints(self) -> None:
        """Every local endpoint needs a new program."""
        self.dirty.update(item_id for item_id, it in self.items.items() if it.local_endpoint)
