"""BGPFilter rules as the speaker applies them (pure: no I/O).

Calico's semantics (its BIRD filter functions, one per BGPFilter and direction): a BGPPeer's
``filters`` are taken in order and, within each, the rules in order; the first rule whose
conditions all hold decides (``Accept`` / ``Reject``); a route no rule matches is accepted.
Conditions:

* ``cidr`` + ``matchOperator``: ``Equal`` -- the route's prefix is the CIDR; ``In`` -- the
  prefix lies within the CIDR (the CIDR itself included) with a prefix length between
  ``prefixLength.min`` (default: the CIDR's) and ``prefixLength.max`` (default: 32 / 128);
  ``NotEqual`` / ``NotIn``: their negations;
* ``source: RemotePeers``: the route was learnt from a BGP peer (on export: a reflected
  route, not one of this node's own blocks; on import every route is);
* ``interface``: the route's outgoing interface matches the pattern (``*`` wildcards); a
  route without a known interface never matches (the speaker passes none today: blocks
  are blackholes, and other routes' interfaces are not looked up);
* ``peerType``: the session is eBGP / iBGP.

The rules of the other IP version than the route's are not consulted.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from datastore.model_bgp import BGPFilter

Direction = Literal["export", "import"]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _within(net: Network, outer: Network) -> bool:
    """``net`` lies within ``outer`` (equal included); False across IP versions (where
    ``subnet_of`` raises)."""
    return net.version == outer.version and net.subnet_of(outer)


@dataclass(frozen=True)
class FilterRule:
    """One BGPFilter rule, ready to match (``version``: of the list it came from)."""

    action: str                      # "Accept" | "Reject"
    version: int = 4
    cidr: str | None = None
    operator: str | None = None      # Equal | NotEqual | In | NotIn
    min_len: int | None = None
    max_len: int | None = None
    source: str | None = None        # "RemotePeers"
    interface: str | None = None
    peer_type: str | None = None     # "eBGP" | "iBGP"
    origin: str = ""                 # "<filter name>.<list>[<i>]", for logs

    @functools.cached_property
    def network(self) -> Network | None:
        """``cidr`` parsed (once: rules are matched against every route on every change)."""
        return ipaddress.ip_network(self.cidr, strict=False) if self.cidr else None

    def _cidr_matches(self, net: Network) -> bool:
        rule_net = self.network
        assert rule_net is not None
        if rule_net.version != net.version:
            return self.operator in ("NotEqual", "NotIn")
        if self.operator in ("Equal", "NotEqual"):
            hit = net == rule_net
            return hit if self.operator == "Equal" else not hit
        lo = rule_net.prefixlen if self.min_len is None else self.min_len
        hi = net.max_prefixlen if self.max_len is None else self.max_len
        hit = _within(net, rule_net) and lo <= net.prefixlen <= hi
        return hit if self.operator == "In" else not hit

    def matches(self, prefix: str, *, remote: bool = False, interface: str | None = None,
                ebgp: bool = False) -> bool:
        net = ipaddress.ip_network(prefix, strict=False)
        if self.cidr and self.operator and not self._cidr_matches(net):
            return False
        if self.source == "RemotePeers" and not remote:
            return False
        if self.interface and (interface is None
                               or not fnmatch.fnmatchcase(interface, self.interface)):
            return False
        return not (self.peer_type and self.peer_type != ("eBGP" if ebgp else "iBGP"))


def accepted(rules: Sequence[FilterRule], prefix: str, *, remote: bool = False,
             interface: str | None = None, ebgp: bool = False) -> bool:
    """Whether ``prefix`` passes ``rules`` (first match decides; no match: accepted)."""
    version = ipaddress.ip_network(prefix, strict=False).version
    for rule in rules:
        if rule.version != version:
            continue
        if rule.matches(prefix, remote=remote, interface=interface, ebgp=ebgp):
            return rule.action == "Accept"
    return True


def rules_of(filters: Iterable[BGPFilter], direction: Direction) -> tuple[FilterRule, ...]:
    """The rules of ``filters`` (in the BGPPeer's order) for one direction, both versions."""
    out: list[FilterRule] = []
    for f in filters:
        for version in (4, 6):
            field = f"{direction}V{version}"
            for i, r in enumerate(getattr(f.spec, field) or []):
                out.append(FilterRule(
                    action=r.action, version=version, cidr=r.cidr or None,
                    operator=r.matchOperator or None,
                    min_len=r.prefixLength.min if r.prefixLength else None,
                    max_len=r.prefixLength.max if r.prefixLength else None,
                    source=r.source or None, interface=r.interface or None,
                    peer_type=r.peerType or None, origin=f"{f.name}.{field}[{i}]"))
    return tuple(out)


def communities_for(prefix: str, advertisements: Iterable[tuple[str, Sequence[str]]]
                    ) -> tuple[list[str], list[str]]:
    """(standard, large) community values for ``prefix``: those of every prefix
    advertisement whose CIDR contains it (Calico: ``net ~ cidr``), in order, no repeats."""
    net = ipaddress.ip_network(prefix, strict=False)
    standard: list[str] = []
    large: list[str] = []
    for cidr, values in advertisements:
        adv = ipaddress.ip_network(cidr, strict=False)
        if not _within(net, adv):
            continue
        for v in values:
            bucket = large if v.count(":") == 2 else standard
            if v not in bucket:
                bucket.append(v)
    return standard, large
