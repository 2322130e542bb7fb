"""Blocks: the unit of address allocation (pure: no I/O).

An IP pool is cut into blocks of ``2**(bits - blockSize)`` addresses (a /26 of 64 addresses
by default).  A node claims a block by creating its document with ``affinity:
"host:<node>"`` and then hands out the block's addresses to its pods; other nodes may
borrow from it unless strict affinity is on.

The block document (JSON, stored at ``ipam.keys.block_key(cidr)``)::

    {"cidr": "10.0.0.64/26",
     "affinity": "host:node-1",          # or null
     "strictAffinity": false,
     "allocations": [0, null, 1, ...],    # one per address (ordinal): index into attributes
     "attributes": [{"handle": "tortie.c1", "node": "node-1", "namespace": "default",
                     "pod": "web-0", "container": "c1"}, ...],
     "unallocated": [3, 4, 5, ..., 1]}    # free ordinals, handed out from the front

Released ordinals go to the back of ``unallocated`` so a freed address is not reused at
once.  All addresses of one handle share one attribute entry, and entries no address uses
any more are dropped (indexes renumbered), so documents stay small.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore.model_network import IPPool

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Attribute fields kept for every allocation (``handle`` is required).
ATTRIBUTE_FIELDS = ("handle", "pod", "namespace", "node", "container")
AFFINITY_PREFIX = "host:"


class IPAMError(Exception):
    """Base class of IPAM errors; ``code`` is the CNI error code to report."""

    code = 100


class AddressInUse(IPAMError):
    """A specific address was requested but is allocated already."""

    def __init__(self, ip: str, handle: str | None = None) -> None:
        owner = f" (held by handle {handle})" if handle else ""
        super().__init__(f"IP address {ip} is already in use{owner}")
        self.ip = ip
        self.handle = handle


# --- block maths ---------------------------------------------------------------------------------


def to_network(cidr: str | IPNetwork) -> IPNetwork:
    return cidr if isinstance(cidr, ipaddress.IPv4Network | ipaddress.IPv6Network) \
        else ipaddress.ip_network(cidr)


def to_address(ip: str | IPAddress) -> IPAddress:
    return ip if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) \
        else ipaddress.ip_address(ip)


def address_order(ip: str | IPAddress) -> tuple[int, int]:
    """Sort key of addresses: IPv4 before IPv6, then by value (addresses of two families
    do not compare)."""
    addr = to_address(ip)
    return addr.version, int(addr)


def block_cidrs(pool_cidr: str | IPNetwork, block_size: int,
                start: str | IPAddress | None = None) -> Iterator[IPNetwork]:
    """The blocks of a pool in address order, lazily (a v6 pool may have 2**60 of them).

    ``start``: begin with the block containing that address.  ValueError if the block size
    does not fit the pool (a pool smaller than one block cannot be cut into blocks).
    """
    pool = to_network(pool_cidr)
    if not pool.prefixlen <= block_size <= pool.max_prefixlen:
        raise ValueError(f"block size /{block_size} does not fit pool {pool}: must be "
                         f"{pool.prefixlen}-{pool.max_prefixlen}")
    step = 1 << (pool.max_prefixlen - block_size)
    first = int(pool.network_address)
    end = first + pool.num_addresses
    if start is not None:
        start_at = int(to_address(start))
        if start_at > first:
            first += (start_at - first) // step * step
    cls = type(pool)
    for base in range(first, end, step):
        yield cls((base, block_size))


def block_count(pool_cidr: str | IPNetwork, block_size: int) -> int:
    pool = to_network(pool_cidr)
    return 1 << max(0, block_size - pool.prefixlen)


def block_network(ip: str | IPAddress, block_size: int) -> IPNetwork:
    """The block of ``block_size`` that contains ``ip``."""
    addr = to_address(ip)
    return ipaddress.ip_network((addr, block_size), strict=False)


def block_for(ip: str | IPAddress, pool: IPPool) -> IPNetwork:
    """The block of ``pool`` that contains ``ip``; ValueError if the pool does not."""
    addr = to_address(ip)
    if addr not in pool.network:
        raise ValueError(f"{addr} is not in IP pool {pool.name} ({pool.spec.cidr})")
    return block_network(addr, int(pool.spec.blockSize or 0))


def reserved_in(block: str | IPNetwork, reserved: Iterable[str | IPNetwork]) -> set[IPAddress]:
    """The addresses of ``block`` that fall inside any of the ``reserved`` networks."""
    net = to_network(block)
    out: set[IPAddress] = set()
    for r in reserved:
        reserved_net = (to_network(r) if not isinstance(r, str)
                        else ipaddress.ip_network(r, strict=False))
        if reserved_net.version != net.version or not reserved_net.overlaps(net):
            continue
        inner = net if net.subnet_of(reserved_net) else reserved_net
        out.update(inner)
        if inner is net:
            break
    return out


def affinity_for(node: str) -> str:
    return AFFINITY_PREFIX + node


def normalise_attrs(attrs: Mapping[str, Any]) -> dict[str, str]:
    """Keep the known attribute fields that are set; ``handle`` is required."""
    out = {k: str(attrs[k]) for k in ATTRIBUTE_FIELDS if attrs.get(k) not in (None, "")}
    if "handle" not in out:
        raise ValueError("allocation attributes need a 'handle'")
    return out


# --- the block document --------------------------------------------------------------------------


@dataclass
class Block:
    """One block document, plus the etcd mod ``revision`` it was read at (not stored)."""

    cidr: str
    affinity: str | None = None
    allocations: list[int | None] = field(default_factory=list)
    attributes: list[dict[str, str]] = field(default_factory=list)
    unallocated: list[int] = field(default_factory=list)
    strict_affinity: bool = False
    revision: int = 0
    network: IPNetwork = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.network = to_network(self.cidr)
        self.cidr = str(self.network)

    @classmethod
    def new(cls, cidr: str | IPNetwork, affinity: str | None = None,
            strict_affinity: bool = False) -> Block:
        """An empty block: every address free, handed out in address order."""
        net = to_network(cidr)
        n = net.num_addresses
        return cls(str(net), affinity, [None] * n, [], list(range(n)), strict_affinity)

    # -- (de)serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "cidr": self.cidr,
            "affinity": self.affinity,
            "strictAffinity": self.strict_affinity,
            "allocations": list(self.allocations),
            "attributes": [dict(a) for a in self.attributes],
            "unallocated": list(self.unallocated),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], revision: int = 0) -> Block:
        """Parse and check a block document; ValueError naming what is wrong."""
        try:
            net = to_network(str(doc["cidr"]))
        except (KeyError, ValueError):
            raise ValueError(f"block document has no valid cidr: {doc.get('cidr')!r}") from None
        where = f"block {net}"
        affinity = doc.get("affinity")
        if affinity is not None and not isinstance(affinity, str):
            raise ValueError(f"{where}: affinity must be a string or null")
        attributes = doc.get("attributes") or []
        if not isinstance(attributes, list) or not all(
                isinstance(a, dict) and isinstance(a.get("handle"), str) for a in attributes):
            raise ValueError(f"{where}: attributes must be objects with a handle")
        allocations = doc.get("allocations")
        n = net.num_addresses
        if not isinstance(allocations, list) or len(allocations) != n:
            raise ValueError(f"{where}: allocations must list {n} entries")
        for a in allocations:
            if a is not None and (type(a) is not int or not 0 <= a < len(attributes)):
                raise ValueError(f"{where}: allocation {a!r} is not an attribute index")
        unallocated = doc.get("unallocated")
        free = {i for i, a in enumerate(allocations) if a is None}
        if (not isinstance(unallocated, list) or len(unallocated) != len(free)
                or set(unallocated) != free):
            raise ValueError(f"{where}: unallocated does not match the free addresses")
        return cls(str(net), affinity, list(allocations),
                   [{str(k): str(v) for k, v in a.items()} for a in attributes],
                   list(unallocated), bool(doc.get("strictAffinity", False)), revision)

    def copy(self) -> Block:
        return Block(self.cidr, self.affinity, list(self.allocations),
                     [dict(a) for a in self.attributes], list(self.unallocated),
                     self.strict_affinity, self.revision)

    # -- addresses --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.allocations)

    @property
    def free_count(self) -> int:
        return len(self.unallocated)

    @property
    def allocated_count(self) -> int:
        return self.size - len(self.unallocated)

    @property
    def is_empty(self) -> bool:
        return len(self.unallocated) == self.size

    @property
    def affinity_node(self) -> str | None:
        """The node the block is affine to (``host:<node>``), if any."""
        if self.affinity and self.affinity.startswith(AFFINITY_PREFIX):
            return self.affinity[len(AFFINITY_PREFIX):]
        return None

    def contains(self, ip: str | IPAddress) -> bool:
        return to_address(ip) in self.network

    def ip_at(self, ordinal: int) -> str:
        return str(self.network.network_address + ordinal)

    def ordinal(self, ip: str | IPAddress) -> int:
        addr = to_address(ip)
        if addr not in self.network:
            raise ValueError(f"{addr} is not in block {self.cidr}")
        return int(addr) - int(self.network.network_address)

    def _reserved_ordinals(self, reserved: Collection[str | IPAddress]) -> set[int]:
        base = int(self.network.network_address)
        out: set[int] = set()
        for r in reserved:
            addr = to_address(r)
            if addr in self.network:
                out.add(int(addr) - base)
        return out

    def available(self, reserved: Collection[str | IPAddress] = frozenset()) -> int:
        """How many addresses :meth:`assign` could still hand out."""
        if not reserved:
            return len(self.unallocated)
        skip = self._reserved_ordinals(reserved)
        return sum(1 for o in self.unallocated if o not in skip)

    def attributes_of(self, ip: str | IPAddress) -> dict[str, str] | None:
        idx = self.allocations[self.ordinal(ip)]
        return None if idx is None else self.attributes[idx]

    def allocated_by(self, ip: str | IPAddress) -> str | None:
        """The node that allocated ``ip`` (its ``node`` attribute, else the block's node);
        None when the address is free."""
        attrs = self.attributes_of(ip)
        if attrs is None:
            return None
        return attrs.get("node") or self.affinity_node

    def allocated(self) -> Iterator[tuple[str, dict[str, str]]]:
        """(address, attributes) of every allocated address, in address order."""
        for o, idx in enumerate(self.allocations):
            if idx is not None:
                yield self.ip_at(o), self.attributes[idx]

    def allocated_where(self, keep: Callable[[dict[str, str]], bool]) -> list[str]:
        """The allocated addresses whose attributes ``keep`` accepts, in address order (the
        attributes are tested once each, and only the addresses kept are formatted)."""
        idxs = {i for i, a in enumerate(self.attributes) if keep(a)}
        if not idxs:
            return []
        return [self.ip_at(o) for o, idx in enumerate(self.allocations) if idx in idxs]

    def ips_for_handle(self, handle: str) -> list[str]:
        idxs = {i for i, a in enumerate(self.attributes) if a.get("handle") == handle}
        return [self.ip_at(o) for o, idx in enumerate(self.allocations) if idx in idxs]

    def handle_counts(self) -> dict[str, int]:
        """handle -> how many addresses of this block it holds."""
        out: dict[str, int] = {}
        for idx in self.allocations:
            if idx is not None:
                h = self.attributes[idx]["handle"]
                out[h] = out.get(h, 0) + 1
        return out

    # -- changes ----------------------------------------------------------------------------

    def _attribute_index(self, attrs: Mapping[str, Any]) -> int:
        norm = normalise_attrs(attrs)
        for i, a in enumerate(self.attributes):
            if a == norm:
                return i
        self.attributes.append(norm)
        return len(self.attributes) - 1

    def assign(self, count: int, attrs: Mapping[str, Any],
               reserved: Collection[str | IPAddress] = frozenset()) -> list[str]:
        """Allocate up to ``count`` free addresses (fewer if the block runs out), skipping
        ``reserved`` ones, in ``unallocated`` order; returns them."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        if count == 0 or not self.unallocated:
            return []
        skip = self._reserved_ordinals(reserved) if reserved else set()
        picked: list[int] = []
        for o in self.unallocated:
            if o not in skip:
                picked.append(o)
                if len(picked) == count:
                    break
        if not picked:
            return []
        idx = self._attribute_index(attrs)
        chosen = set(picked)
        self.unallocated = [o for o in self.unallocated if o not in chosen]
        for o in picked:
            self.allocations[o] = idx
        return [self.ip_at(o) for o in picked]

    def assign_ip(self, ip: str | IPAddress, attrs: Mapping[str, Any]) -> str:
        """Allocate one specific address; :class:`AddressInUse` if it is taken."""
        o = self.ordinal(ip)
        held = self.allocations[o]
        if held is not None:
            raise AddressInUse(self.ip_at(o), self.attributes[held].get("handle"))
        self.allocations[o] = self._attribute_index(attrs)
        self.unallocated.remove(o)
        return self.ip_at(o)

    def release(self, ips: Iterable[str | IPAddress]) -> list[str]:
        """Free the given addresses of this block; returns those that were allocated
        (releasing a free address does nothing).  ValueError for an address outside."""
        released: list[str] = []
        for ip in ips:
            o = self.ordinal(ip)
            if self.allocations[o] is not None:
                self.allocations[o] = None
                self.unallocated.append(o)
                released.append(self.ip_at(o))
        if released:
            self._compact()
        return released

    def release_handle(self, handle: str) -> list[str]:
        """Free every address of ``handle``; returns them."""
        return self.release(self.ips_for_handle(handle))

    def _compact(self) -> None:
        """Drop attribute entries no address uses; renumber the allocations."""
        used = sorted({i for i in self.allocations if i is not None})
        if len(used) == len(self.attributes):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if i is None else remap[i] for i in self.allocations]
