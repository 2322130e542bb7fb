"""Calico-style block IPAM over etcd, correct with any number of concurrent allocators.

State (see ``ipam.keys`` and ``ipam.blocks``):

* block documents: the source of truth for which address is allocated to which handle;
  every change of a block is a compare-and-swap on the block key's mod revision, retried
  (re-read, redo) on conflict; claiming a block is creating its document (create-if-absent)
  with ``affinity: host:<node>``; an empty block affine to this node is deleted with CAS;
* handle documents ``{"handle": h, "blocks": {cidr: count}}``: which blocks hold a handle's
  addresses, so releasing a handle reads only those blocks.  As in Calico the handle is
  written *before* the block (and corrected afterwards if the block write surely did not
  happen: not after a write whose answer was lost, e.g. while etcd changed leaders, which
  may have been applied all the same), so a handle document always covers at least its
  addresses;
* a host document per node ``{"node": n, "claim": cidr}``: every block claim by the node
  (also by other processes acting for the same node) is a CAS on it, made right after
  re-reading the node's blocks.  Two claims for one node therefore cannot both decide on
  the same stale view, so a node only claims a new block when all its blocks (in the
  chosen pools) are full: it uses the minimum number of blocks.  The recorded claim is
  completed (its block created) by whoever sees it missing next, so a crash between the
  CAS and the create loses nothing.

The allocator caches this node's affine blocks in memory.  The cache only chooses where
to try first: every write is a CAS on the revision it remembers, and a conflict re-reads
the block, so writes by other processes (for this node or any other) are always seen.
Concurrent ADD and DEL for the *same* handle must be serialised by the caller (the CNI
handler does this per container), as in Calico.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datastore.backend import KV, AlreadyExists, Conflict, KVStore, NotFound, Write
from datastore.kinds import by_plural
from datastore.model_network import IPPool
from datastore.resources import Resources
from ipam import keys
from ipam.blocks import (
    AddressInUse,
    Block,
    IPAddress,
    IPAMError,
    IPNetwork,
    address_order,
    affinity_for,
    block_cidrs,
    block_for,
    reserved_in,
    to_address,
    to_network,
)
from ipam.pools import NotInPool, enabled_pool_for, is_enabled

__all__ = [
    "IPAM",
    "AddressInUse",
    "CheckReport",
    "IPAMConfig",
    "IPAMContention",
    "IPAMError",
    "IPAMExhausted",
    "NotInPool",
    "PoolUsage",
]

log = logging.getLogger(__name__)

#: CAS attempts on one document before giving up (each conflict means someone else won).
MAX_ATTEMPTS = 500
#: Rounds of "try affine blocks, re-read, claim or borrow" for one auto_assign.
MAX_ROUNDS = 1000
BACKOFF_BASE = 0.0005
BACKOFF_MAX = 0.02


class IPAMExhausted(IPAMError):
    """No free address in the chosen pools (or no pool at all)."""


class IPAMContention(IPAMError):
    """Gave up after too many concurrent modifications (should not happen in practice)."""

    code = 11  # try again later


@dataclass(frozen=True)
class IPAMConfig:
    """The IPAMConfiguration ``default`` (Calico's defaults when it does not exist)."""

    strict_affinity: bool = False
    max_blocks_per_host: int = 0  # 0: unlimited
    auto_allocate_blocks: bool = True

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> IPAMConfig:
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            spec = {}
        strict = spec.get("strictAffinity", False)
        max_blocks = spec.get("maxBlocksPerHost", 0)
        auto = spec.get("autoAllocateBlocks", True)
        return cls(
            strict_affinity=strict is True,
            max_blocks_per_host=max_blocks if type(max_blocks) is int and max_blocks > 0 else 0,
            auto_allocate_blocks=auto is not False,
        )


@dataclass
class PoolUsage:
    name: str
    cidr: str
    size: int
    allocated: int = 0
    blocks: int = 0
    blocks_per_node: dict[str, int] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return self.size - self.allocated

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cidr": self.cidr, "size": self.size,
                "allocated": self.allocated, "free": self.free, "blocks": self.blocks,
                "blocksPerNode": dict(sorted(self.blocks_per_node.items()))}


@dataclass
class CheckReport:
    """What ``IPAM.check`` found; ``clean`` when every list is empty."""

    leaked: list[tuple[str, str]] = field(default_factory=list)        # (ip, handle)
    missing: list[tuple[str, str]] = field(default_factory=list)       # (ip, endpoint)
    orphan_blocks: list[tuple[str, str]] = field(default_factory=list)  # (cidr, node)
    dangling_handles: list[tuple[str, str]] = field(default_factory=list)  # (handle, why)
    allocated: int = 0
    blocks: int = 0

    @property
    def clean(self) -> bool:
        return not (self.leaked or self.missing or self.orphan_blocks or self.dangling_handles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "allocated": self.allocated,
            "blocks": self.blocks,
            "addressesWithoutEndpoint": [{"ip": i, "handle": h} for i, h in self.leaked],
            "endpointsWithoutAddress": [{"ip": i, "endpoint": e} for i, e in self.missing],
            "blocksOfUnknownNodes": [{"cidr": c, "node": n} for c, n in self.orphan_blocks],
            "danglingHandles": [{"handle": h, "problem": p}
                                for h, p in self.dangling_handles],
        }


def _releaser(ips: list[IPAddress], node: str | None = None) -> Callable[[Block], list[str]]:
    """A release of ``ips`` from a block; with ``node``, of those that node allocated."""
    if node is None:
        return lambda b: b.release(ips)
    return lambda b: b.release([ip for ip in ips if b.allocated_by(ip) == node])


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, min(BACKOFF_BASE * 2 ** min(attempt, 8),
                                              BACKOFF_MAX)))


def _sort_key(b: Block) -> tuple[int, int, int]:
    return b.network.version, int(b.network.network_address), b.network.prefixlen


def _in_pools(net: IPNetwork, pools: Sequence[IPNetwork]) -> bool:
    return any(p.version == net.version and net.subnet_of(p)
               for p in pools)


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _wholly_reserved(net: IPNetwork, reserved: Sequence[IPNetwork]) -> bool:
    return any(r.version == net.version and net.subnet_of(r)
               for r in reserved)


def _first_free_block(pool: IPPool, blocks: Iterable[Block],
                      reserved: Sequence[IPNetwork]) -> str | None:
    """The first block of ``pool`` (in address order) that no block document occupies
    and that has at least one unreserved address.  Lazy: wholly reserved stretches are
    skipped in one step, so even a huge v6 pool is scanned in O(existing blocks)."""
    size = int(pool.spec.blockSize or 0)
    existing = [b.network for b in blocks if _overlap(b.network, pool.network)]
    taken = {str(n) for n in existing if n.prefixlen == size}
    odd = [n for n in existing if n.prefixlen != size]  # blocks of an earlier blockSize
    last = int(pool.network.broadcast_address)
    start: IPAddress | None = None
    while True:
        for net in block_cidrs(pool.network, size, start):
            if str(net) in taken or any(_overlap(net, o) for o in odd):
                continue
            covering = [r for r in reserved
                        if r.version == net.version and net.subnet_of(r)]
            if covering:
                end = max(int(r.broadcast_address) for r in covering) + 1
                if end > last:
                    return None
                start = type(pool.network.network_address)(end)
                break
            return str(net)
        else:
            return None


class Unread:
    """Not read yet (see :meth:`IPAM.release_by_handle`)."""


UNREAD = Unread()


@dataclass
class Also:
    """The caller's own writes to go in an allocation's transaction (see
    :meth:`IPAM.auto_assign`): ``make`` gives them for the addresses chosen; ``revision``
    is the transaction's once they were written (None: they were not, the caller writes
    them itself)."""

    make: Callable[[list[str]], Sequence[Write]]
    revision: int | None = None


def reserved_of(reservations: Iterable[Any]) -> list[IPNetwork]:
    """The reserved networks of IPReservation resources."""
    return [ipaddress.ip_network(c, strict=False)
            for r in reservations for c in r.spec.reservedCIDRs or []]


class IPAM:
    """Block IPAM for one node (``node``), over a connected :class:`~datastore.backend.KVStore`."""

    def __init__(self, store: KVStore, node: str) -> None:
        keys.host_key(node)  # validates the name
        self.store = store
        self.node = node
        self.affinity = affinity_for(node)
        self._resources = Resources(store)
        self._affine: dict[str, Block] = {}  # cidr -> this node's block (cache)
        # cidr -> lock serialising this process's one-transaction writes of the block
        self._block_locks: dict[str, asyncio.Lock] = {}
        self._locks_loop: asyncio.AbstractEventLoop | None = None

    def _slow_path_lock(self) -> asyncio.Lock:
        """The lock of :meth:`auto_assign`'s slow path (read every block, claim one) in
        this process: see :meth:`_block_lock` for why locks are per loop."""
        return self._block_lock("")

    def _block_lock(self, cidr: str) -> asyncio.Lock:
        """The lock of block ``cidr`` in this process.  Concurrent ADDs and DELs of one node
        write the same few blocks: each by compare-and-swap from the cached block, so without
        the lock all but one of them would find the block changed and take the slow path
        (re-read, retry: several round trips).  Under it each finds the revision its
        predecessor just wrote, and the block costs one transaction per request."""
        loop = asyncio.get_running_loop()
        if loop is not self._locks_loop:  # locks belong to one loop (a CLI runs several)
            self._block_locks, self._locks_loop = {}, loop
        lock = self._block_locks.get(cidr)
        if lock is None:
            lock = self._block_locks[cidr] = asyncio.Lock()
        return lock

    # --- datastore reads ------------------------------------------------------------------

    async def config(self) -> IPAMConfig:
        try:
            kv = await self.store.get(keys.IPAM_CONFIG)
        except NotFound:
            return IPAMConfig()
        return IPAMConfig.from_doc(kv.value)

    async def pools(self) -> list[IPPool]:
        items: list[IPPool] = await self._resources.list(by_plural("ippools"))
        return items

    async def reserved_networks(self) -> list[IPNetwork]:
        return reserved_of(await self._resources.list(by_plural("ipreservations")))

    @staticmethod
    def handle_read_key(handle: str) -> str:
        """The handle's key, for a caller that reads it in its own transaction: the handle
        exists (holds, or may hold, addresses) when the key does; its document can be given
        to :meth:`release_by_handle`."""
        return keys.handle_key(handle)

    async def list_blocks(self) -> list[Block]:
        """Every block document (with its ``revision``), in address order."""
        kvs, _ = await self.store.list(keys.BLOCKS)
        out: list[Block] = []
        for kv in kvs:
            try:
                out.append(Block.from_dict(kv.value, kv.mod_revision))
            except ValueError as e:
                log.error("ignoring corrupt block document %s: %s", kv.key, e)
        return sorted(out, key=_sort_key)

    async def _load_blocks(self) -> dict[str, Block]:
        """All blocks by CIDR; refreshes the cache of this node's blocks."""
        blocks = {b.cidr: b for b in await self.list_blocks()}
        self._affine = {c: b for c, b in blocks.items() if b.affinity == self.affinity}
        return blocks

    async def _get_block(self, cidr: str) -> Block | None:
        try:
            kv = await self.store.get(keys.block_key(cidr))
        except NotFound:
            self._affine.pop(cidr, None)
            return None
        return self._remember(Block.from_dict(kv.value, kv.mod_revision))

    def _remember(self, block: Block) -> Block:
        if block.affinity == self.affinity:
            self._affine[block.cidr] = block
        else:
            self._affine.pop(block.cidr, None)
        return block

    # --- handles --------------------------------------------------------------------------

    @staticmethod
    def _handle_doc(handle: str, blocks: Mapping[str, int]) -> dict[str, Any]:
        """The handle document: how many addresses the handle holds in each block."""
        return {"handle": handle, "blocks": dict(blocks)}

    async def _adjust_handle(self, handle: str, cidr: str, delta: int) -> None:
        """Add ``delta`` to the handle's address count in block ``cidr`` (CAS, retried);
        the document goes away when no block is left."""
        if delta == 0:
            return
        key = keys.handle_key(handle)
        if delta > 0 and await self.store.compare_and_swap(
                key, self._handle_doc(handle, {cidr: delta}), 0):
            return  # a new handle: the common case, one round trip
        for attempt in range(MAX_ATTEMPTS):
            kv: KV | None
            try:
                kv = await self.store.get(key)
            except NotFound:
                kv = None
            blocks: dict[str, int] = dict(kv.value.get("blocks") or {}) if kv else {}
            n = int(blocks.get(cidr, 0)) + delta
            if n > 0:
                blocks[cidr] = n
            else:
                blocks.pop(cidr, None)
            doc = self._handle_doc(handle, blocks) if blocks else None
            if kv is None and doc is None:
                return
            if await self.store.compare_and_swap(key, doc, kv.mod_revision if kv else 0):
                return
            await _backoff(attempt)
        raise IPAMContention(f"handle {handle} is being modified concurrently; retry")

    # --- assignment -----------------------------------------------------------------------

    async def _assign_in_block(self, block: Block, handle: str, attrs: Mapping[str, Any],
                               count: int, reserved: Sequence[IPNetwork],
                               affine_only: bool, also: Also | None = None) -> list[str]:
        """Allocate up to ``count`` addresses in one block (CAS, re-read on conflict)."""
        cidr = block.cidr
        key = keys.block_key(cidr)
        reserved_here = reserved_in(block.network, reserved) if reserved else set()
        if self._usable(block, affine_only):
            # The common case in one transaction: a new handle document and the block, both
            # written only if the handle does not exist and the block is unchanged.
            async with self._block_lock(cidr):
                block = self._affine.get(cidr, block)  # as the last writer here left it
                new = block.copy()
                ips = new.assign(count, attrs, reserved_here)
                if not ips:
                    return []
                writes = [
                    Write(keys.handle_key(handle), self._handle_doc(handle, {cidr: len(ips)}),
                          0),
                    Write(key, new.to_dict(), block.revision)]
                extra = also.make(ips) if also is not None and len(ips) == count else ()
                revision = await self.store.commit([*writes, *extra])
                if revision is None and extra:  # perhaps for the caller's keys: without them
                    revision = await self.store.commit(writes)
                elif extra and also is not None:
                    also.revision = revision
                if revision is not None:
                    new.revision = revision
                    self._remember(new)
                    return ips
            # the handle exists (it holds addresses elsewhere) or the block changed: the
            # general path below (handle first, as in Calico; the block by CAS, re-read)
        await self._adjust_handle(handle, cidr, count)
        got: list[str] = []
        in_doubt = False  # a block write whose outcome etcd did not tell: it may have happened
        try:
            current: Block | None = block
            for attempt in range(MAX_ATTEMPTS):
                if current is None or not self._usable(current, affine_only):
                    return got  # gone, or no longer ours to use
                new = current.copy()
                ips = new.assign(count, attrs, reserved_here)
                if not ips:
                    return got  # full
                try:
                    kv = await self.store.update(key, new.to_dict(), current.revision)
                except Conflict:
                    await _backoff(attempt)
                    current = await self._get_block(cidr)
                    continue
                except NotFound:
                    self._affine.pop(cidr, None)
                    return got
                except BaseException:
                    in_doubt = True
                    raise
                new.revision = kv.mod_revision
                self._remember(new)
                got = ips
                return got
            raise IPAMContention(f"block {cidr} is being modified concurrently; retry")
        finally:
            # after a write in doubt the handle keeps covering the addresses it may hold, so
            # the release by handle that follows the failed ADD finds them
            if len(got) < count and not in_doubt:
                await self._adjust_handle(handle, cidr, len(got) - count)

    def _usable(self, block: Block, affine_only: bool) -> bool:
        """Whether this node may allocate in ``block`` (its own, or borrowing allowed)."""
        mine = block.affinity == self.affinity
        return mine or not (affine_only or block.strict_affinity)

    async def _from_affine(self, handle: str, attrs: Mapping[str, Any],
                           pool_nets: Sequence[IPNetwork], need: int,
                           reserved: Sequence[IPNetwork], also: Also | None = None
                           ) -> list[str]:
        """Allocate from the (cached) blocks affine to this node that have room (``also``
        with the addresses when one block gives them all at once)."""
        got: list[str] = []
        for block in sorted(self._affine.values(), key=_sort_key):
            if len(got) == need:
                break
            if not _in_pools(block.network, pool_nets):
                continue
            if block.available(reserved_in(block.network, reserved) if reserved else ()) == 0:
                continue
            got += await self._assign_in_block(block, handle, attrs, need - len(got),
                                               reserved, affine_only=True,
                                               also=also if not got else None)
        return got

    def _claim_candidate(self, claim: str | None, blocks: Mapping[str, Block],
                         pools: Sequence[IPPool], cfg: IPAMConfig,
                         reserved: Sequence[IPNetwork]) -> tuple[str | None, str]:
        """The block to claim next for this node (or None, with the reason)."""
        if not cfg.auto_allocate_blocks:
            return None, "autoAllocateBlocks is false"
        versions = {p.network.version for p in pools}
        mine = sum(1 for b in blocks.values()
                   if b.affinity == self.affinity and b.network.version in versions)
        if cfg.max_blocks_per_host and mine >= cfg.max_blocks_per_host:
            return None, f"node {self.node} has maxBlocksPerHost ({cfg.max_blocks_per_host}) " \
                         "blocks"

        pool_nets = [p.network for p in pools]
        # A claim recorded for this node whose block was never created (its claimer died,
        # or is about to create it): complete it rather than claiming another block.
        if claim and claim not in blocks:
            net = to_network(claim)
            if _in_pools(net, pool_nets) and not _wholly_reserved(net, reserved) and not any(
                    _overlap(net, b.network) for b in blocks.values()):
                return claim, ""
        for pool in pools:
            cidr = _first_free_block(pool, blocks.values(), reserved)
            if cidr is not None:
                return cidr, ""
        return None, "no free block left in the pool(s)"

    async def _claim(self, cidr: str, host: KV | None, cfg: IPAMConfig) -> bool:
        """Record the claim on the host document (CAS), then create the block.  False if
        another claim for this node got in first (re-read and decide again)."""
        doc = {"node": self.node, "claim": cidr}
        if not await self.store.compare_and_swap(keys.host_key(self.node), doc,
                                                 host.mod_revision if host else 0):
            return False
        await self._create_block(cidr, cfg)
        return True

    async def _create_block(self, cidr: str, cfg: IPAMConfig) -> None:
        block = Block.new(cidr, self.affinity, cfg.strict_affinity)
        try:
            kv = await self.store.create(keys.block_key(cidr), block.to_dict())
        except AlreadyExists:
            return  # completed by another process of this node, or claimed by another node
        block.revision = kv.mod_revision
        self._remember(block)
        log.info("node %s claimed block %s", self.node, cidr)

    async def _borrow(self, handle: str, attrs: Mapping[str, Any], blocks: Mapping[str, Block],
                      pool_nets: Sequence[IPNetwork], need: int,
                      reserved: Sequence[IPNetwork]) -> list[str]:
        """Allocate from any block of the pools that has room (not strictly another's)."""
        got: list[str] = []
        for block in sorted(blocks.values(), key=_sort_key):
            if len(got) == need:
                break
            if not _in_pools(block.network, pool_nets):
                continue
            if block.strict_affinity and block.affinity != self.affinity:
                continue
            if block.available(reserved_in(block.network, reserved) if reserved else ()) == 0:
                continue
            got += await self._assign_in_block(block, handle, attrs, need - len(got),
                                               reserved, affine_only=False)
        return got

    def _attrs(self, handle: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
        keys.handle_key(handle)  # validates
        out = dict(attrs)
        out["handle"] = handle
        out.setdefault("node", self.node)
        return out

    async def auto_assign(self, handle: str, attrs: Mapping[str, Any], pools: Sequence[IPPool],
                          num: int = 1,
                          reserved: Sequence[IPNetwork] | None = None,
                          also: Also | None = None) -> list[str]:
        """Allocate ``num`` addresses for ``handle`` from ``pools`` (in order of preference):
        from this node's blocks, else by claiming a new block, else (unless strictAffinity)
        by borrowing from any block of the pools.  All or nothing: :class:`IPAMExhausted`
        when there is not enough room.  ``reserved``: the IPReservations' networks when the
        caller has just read them (:meth:`reserved_networks`), else they are read here.
        ``also``: the caller's writes (e.g. creating the pod's endpoint), put in the
        allocation's one transaction when the common case applies (``also.revision`` says
        whether they were)."""
        if num < 1:
            raise ValueError(f"num must be at least 1, got {num}")
        attrs = self._attrs(handle, attrs)
        usable = [p for p in pools if is_enabled(p)]
        names = ", ".join(p.name for p in pools) or "(none)"
        if not usable:
            raise IPAMExhausted(f"no enabled IP pool to allocate from (pools: {names})")
        pool_nets = [p.network for p in usable]
        if reserved is None:
            reserved = await self.reserved_networks()
        got: list[str] = []
        try:
            # the node's blocks first, without waiting for anyone
            got += await self._from_affine(handle, attrs, pool_nets, num, reserved, also)
            if len(got) == num:
                return got
            for _ in range(MAX_ROUNDS):
                # Slow path, one request of this process at a time (concurrent ADDs that
                # found the node's blocks full wait here for the first one's claim, then
                # take from its block, instead of all reading every block)
                async with self._slow_path_lock():
                    got += await self._from_affine(handle, attrs, pool_nets, num - len(got),
                                                   reserved, also if not got else None)
                    if len(got) < num:
                        got += await self._make_room(handle, attrs, pool_nets, usable, names,
                                                     num - len(got), reserved)
                if len(got) == num:
                    return got
            raise IPAMContention(f"could not allocate for {handle}: too much contention")
        except BaseException:
            if got:
                await asyncio.shield(self._release_quietly(got))
            raise

    async def _make_room(self, handle: str, attrs: Mapping[str, Any],
                         pool_nets: Sequence[IPNetwork], usable: Sequence[IPPool], names: str,
                         need: int, reserved: Sequence[IPNetwork]) -> list[str]:
        """One round of :meth:`auto_assign`'s slow path: read the host document, then the
        blocks (in this order: see the module docstring), and claim a block or borrow.  The
        addresses borrowed; none when the node's blocks have room again or a block was
        claimed (the caller tries them again); :class:`IPAMExhausted` when neither."""
        host = await self._get_host()
        blocks = await self._load_blocks()
        if any(b.available(reserved_in(b.network, reserved) if reserved else ()) > 0
               for b in self._affine.values() if _in_pools(b.network, pool_nets)):
            return []  # another process of this node made room or claimed a block
        cfg = await self.config()
        claim = host.value.get("claim") if host else None
        cidr, why = self._claim_candidate(claim if isinstance(claim, str) else None,
                                          blocks, usable, cfg, reserved)
        if cidr is not None:
            await self._claim(cidr, host, cfg)
            return []
        if not cfg.strict_affinity:
            borrowed = await self._borrow(handle, attrs, blocks, pool_nets, need, reserved)
            if borrowed:
                return borrowed
        elif why:
            why += "; strictAffinity forbids borrowing from other blocks"
        raise IPAMExhausted(
            f"no free IP address in IP pool(s) {names} for node {self.node}: {why}")

    async def _release_quietly(self, ips: list[str]) -> None:
        try:
            await self.release_ips(ips)
        except Exception as e:  # the original error matters more
            log.error("could not give back %s after a failed allocation: %s", ips, e)

    async def _get_host(self) -> KV | None:
        try:
            return await self.store.get(keys.host_key(self.node))
        except NotFound:
            return None

    async def assign_ip(self, ip: str | IPAddress, handle: str,
                        attrs: Mapping[str, Any]) -> str:
        """Allocate one specific address (claiming its block for this node if nobody has);
        :class:`AddressInUse` if taken, :class:`NotInPool` outside every enabled pool.
        Assigning an address again to the handle that holds it is fine."""
        addr = to_address(ip)
        attrs = self._attrs(handle, attrs)
        pool = enabled_pool_for(addr, await self.pools())
        cidr = str(block_for(addr, pool))
        if await self._get_block(cidr) is None:
            # A block of an earlier blockSize may hold the address: use that one.
            cidr = next((b.cidr for b in await self.list_blocks() if addr in b.network), cidr)
        key = keys.block_key(cidr)
        await self._adjust_handle(handle, cidr, 1)
        done = False  # written, or (in doubt) maybe written: the handle keeps covering it
        try:
            for attempt in range(MAX_ATTEMPTS):
                block = await self._get_block(cidr)
                if block is None:
                    cfg = await self.config()
                    block = Block.new(cidr, self.affinity, cfg.strict_affinity)
                    block.assign_ip(addr, attrs)
                    try:
                        kv = await self.store.create(key, block.to_dict())
                    except AlreadyExists:
                        continue
                    except BaseException:
                        done = True  # in doubt: the create may have happened
                        raise
                else:
                    held = block.attributes_of(addr)
                    if held is not None and held.get("handle") == handle:
                        return str(addr)  # already ours (the finally undoes the +1)
                    block.assign_ip(addr, attrs)  # AddressInUse propagates
                    try:
                        kv = await self.store.update(key, block.to_dict(), block.revision)
                    except (Conflict, NotFound):
                        await _backoff(attempt)
                        continue
                    except BaseException:
                        done = True  # in doubt: the update may have happened
                        raise
                block.revision = kv.mod_revision
                self._remember(block)
                done = True
                return str(addr)
            raise IPAMContention(f"block {cidr} is being modified concurrently; retry")
        finally:
            if not done:
                await self._adjust_handle(handle, cidr, -1)

    # --- release --------------------------------------------------------------------------

    async def _release_in_block(self, cidr: str, op: Callable[[Block], list[str]],
                                count_handles: bool) -> list[str] | None:
        """Apply a release ``op`` to one block (CAS, retried); delete the block if that
        leaves it empty and it is this node's (or nobody's).  With ``count_handles`` the
        handle documents are decremented for what was released.  None: no such block."""
        key = keys.block_key(cidr)
        for attempt in range(MAX_ATTEMPTS):
            block = await self._get_block(cidr)
            if block is None:
                return None
            new = block.copy()
            owners = {ip: a["handle"] for ip, a in new.allocated()}
            released = op(new)
            if not released:
                return []
            try:
                kv = await self.store.update(key, new.to_dict(), block.revision)
            except Conflict:
                await _backoff(attempt)
                continue
            except NotFound:
                return None
            new.revision = kv.mod_revision
            self._remember(new)
            if count_handles:
                per_handle: dict[str, int] = {}
                for ip in released:
                    per_handle[owners[ip]] = per_handle.get(owners[ip], 0) + 1
                for h, n in per_handle.items():
                    if h:
                        await self._adjust_handle(h, cidr, -n)
            if new.is_empty and new.affinity in (None, self.affinity):
                await self._delete_empty(new)
            return released
        raise IPAMContention(f"block {cidr} is being modified concurrently; retry")

    async def _delete_empty(self, block: Block) -> None:
        """Give an empty block back to the pool, unless someone allocated in it meanwhile."""
        self._affine.pop(block.cidr, None)
        try:
            await self.store.delete(keys.block_key(block.cidr), block.revision)
        except (Conflict, NotFound):
            return  # it is in use again (the next re-read caches it again)
        log.info("node %s released empty block %s", self.node, block.cidr)

    async def release_by_handle(self, handle: str, read: KV | Unread | None = UNREAD
                                ) -> list[str]:
        """Free every address of ``handle``; returns them (empty if there were none).
        ``read``: the handle's document as the caller just read it (:meth:`handle_read_key`,
        None: it did not exist), which saves the first read."""
        released, _ = await self.release_by_handle_with(handle, read, ())
        return released

    async def release_by_handle_with(self, handle: str, read: KV | Unread | None,
                                     also: Sequence[Write]) -> tuple[list[str], bool]:
        """:meth:`release_by_handle`, and ``also`` (the caller's writes of its own keys, e.g.
        deleting the pod's endpoint) in the release's one transaction when the common case
        applies: (addresses freed, True).  False: ``also`` was not written (the release took
        the general way, or one of those keys had changed), the caller writes it itself."""
        key = keys.handle_key(handle)
        released: list[str] = []
        for attempt in range(MAX_ATTEMPTS):
            if not isinstance(read, Unread):
                kv, read = read, UNREAD
                if kv is None:
                    return released, False
            else:
                try:
                    kv = await self.store.get(key)
                except NotFound:
                    return released, False
            if not released:
                fast = await self._release_handle_at_once(handle, kv, also)
                if fast is not None:
                    return fast, bool(also)
                if also:  # the one transaction failed: perhaps for ``also``; once without
                    fast = await self._release_handle_at_once(handle, kv, ())
                    if fast is not None:
                        return fast, False
            for cidr in sorted(kv.value.get("blocks") or {}):
                released += await self._release_in_block(
                    cidr, lambda b: b.release_handle(handle), count_handles=False) or []
            try:
                await self.store.delete(key, kv.mod_revision)
                return released, False
            except NotFound:
                return released, False
            except Conflict:  # the handle got an address meanwhile: release that too
                await _backoff(attempt)
        raise IPAMContention(f"handle {handle} is being modified concurrently; retry")

    async def _release_handle_at_once(self, handle: str, kv: KV, also: Sequence[Write]
                                      ) -> list[str] | None:
        """The common case of :meth:`release_by_handle` in one transaction: the handle holds
        addresses in one block of this node's (cached): that block without them, the
        handle document and ``also`` go together, if none changed.  None when that does not
        apply or the transaction found a change (nothing was written): the general path
        follows."""
        cidrs = list(kv.value.get("blocks") or {})
        if len(cidrs) != 1 or cidrs[0] not in self._affine:
            return None
        async with self._block_lock(cidrs[0]):
            cached = self._affine.get(cidrs[0])
            if cached is None:
                return None
            new = cached.copy()
            released = new.release_handle(handle)
            if not released:
                return None
            revision = await self.store.commit([
                Write(keys.block_key(cached.cidr), new.to_dict(), cached.revision),
                Write(keys.handle_key(handle), None, kv.mod_revision), *also])
            if revision is None:
                return None
            new.revision = revision
            self._remember(new)
        if new.is_empty and new.affinity in (None, self.affinity):
            await self._delete_empty(new)
        return released

    async def release_ips(self, ips: Iterable[str | IPAddress],
                          node: str | None = None) -> list[str]:
        """Free the given addresses (whoever holds them; with ``node``, only those allocated
        by that node); returns those that were allocated.  Releasing a free or unknown
        address does nothing."""
        addrs = [to_address(ip) for ip in ips]
        if not addrs:
            return []
        pools = await self.pools()
        by_block: dict[str, list[IPAddress]] = {}
        unplaced: list[IPAddress] = []
        for a in addrs:
            pool = next((p for p in pools if a in p.network), None)
            if pool is None:
                unplaced.append(a)
            else:
                by_block.setdefault(str(block_for(a, pool)), []).append(a)
        released: list[str] = []
        for cidr, group in by_block.items():
            got = await self._release_in_block(cidr, _releaser(group, node),
                                               count_handles=True)
            if got is None:
                unplaced += group
            else:
                released += got
        if unplaced:  # pool gone or its blockSize changed: find the blocks that hold them
            found: dict[str, list[IPAddress]] = {}
            blocks = await self.list_blocks()
            for a in unplaced:
                b = next((b for b in blocks if a in b.network), None)
                if b is not None:
                    found.setdefault(b.cidr, []).append(a)
            for cidr, group in found.items():
                released += await self._release_in_block(cidr, _releaser(group, node),
                                                         count_handles=True) or []
        return released

    async def release_host_affinities(self, node: str, *, must_be_empty: bool = True,
                                      ) -> tuple[list[str], list[str]]:
        """Give back the blocks of a node that left the cluster (Calico's
        ``ReleaseHostAffinities``): every empty block affine to ``node`` is deleted -- a
        compare-and-swap on the revision read, so a block that got an address meanwhile
        stays.  A block still holding addresses keeps its affinity with ``must_be_empty``
        (the node's host document stays too while any is left); without it, it loses its
        affinity (a CAS on its revision, re-read on conflict) and stays, affine to nobody,
        until its last address is released (which deletes it), and the host document goes
        in any case.  Returns (CIDRs deleted, CIDRs still holding addresses)."""
        affinity = affinity_for(node)
        released: list[str] = []
        busy: list[str] = []
        for found in await self.list_blocks():
            if found.affinity != affinity:
                continue
            block: Block | None = found
            for attempt in range(MAX_ATTEMPTS):
                if block is None or block.affinity != affinity:
                    break  # deleted, or claimed again, meanwhile: not ours to touch
                key = keys.block_key(block.cidr)
                try:
                    if block.is_empty:
                        await self.store.delete(key, block.revision)
                        released.append(block.cidr)
                        log.info("released block %s of node %s", block.cidr, node)
                    elif must_be_empty:
                        busy.append(block.cidr)
                    else:
                        kept = block.copy()
                        kept.affinity = None
                        await self.store.update(key, kept.to_dict(), block.revision)
                        busy.append(block.cidr)
                        log.info("block %s of node %s keeps %d address(es); no longer "
                                 "affine to it", block.cidr, node, block.allocated_count)
                    break
                except NotFound:
                    break
                except Conflict:  # changed meanwhile: look again
                    if must_be_empty:
                        busy.append(block.cidr)
                        break
                    await _backoff(attempt)
                    block = await self._get_block(block.cidr)
            else:
                raise IPAMContention(f"block {found.cidr} is being modified concurrently; "
                                     "retry")
        if not busy or not must_be_empty:
            with contextlib.suppress(NotFound):
                await self.store.delete(keys.host_key(node))
        return released, busy

    # --- queries --------------------------------------------------------------------------

    async def ips_by_handle(self, handle: str) -> list[str]:
        """The addresses ``handle`` holds, in address order (empty when it holds none): read
        from the blocks its handle document names."""
        try:
            kv = await self.store.get(keys.handle_key(handle))
        except NotFound:
            return []
        ips: list[str] = []
        for cidr in sorted(kv.value.get("blocks") or {}):
            block = await self._get_block(cidr)
            if block is not None:
                ips += block.ips_for_handle(handle)
        return sorted(ips, key=address_order)

    async def blocks_affine_to(self, node: str) -> list[Block]:
        """The blocks affine to ``node`` (with their ``revision``), in address order."""
        affinity = affinity_for(node)
        return [b for b in await self.list_blocks() if b.affinity == affinity]

    async def handles_recorded_only_in_blocks_of(self, node: str) -> set[str]:
        """The handles whose handle document records addresses only in blocks affine to
        ``node``.  Unlike a scan of the blocks this also finds what a crash between "handle
        written" and "block written" leaves: a handle that no block holds."""
        affine = {b.cidr for b in await self.blocks_affine_to(node)}
        kvs, _ = await self.store.list(keys.HANDLES)
        found: set[str] = set()
        for kv in kvs:
            handle = str(kv.value.get("handle") or kv.key[len(keys.HANDLES):])
            blocks = set(kv.value.get("blocks") or {})
            if blocks and blocks <= affine:
                found.add(handle)
        return found

    async def delete_host(self, node: str) -> bool:
        """Forget ``node``'s host document (its last block claim), e.g. when the node left
        the cluster; its blocks stay.  Returns whether there was one."""
        try:
            await self.store.delete(keys.host_key(node))
        except NotFound:
            return False
        return True

    # --- reports --------------------------------------------------------------------------

    async def handles_on_node(self, node: str) -> dict[str, list[str]]:
        """handle -> addresses, for every allocation made by ``node``."""
        out: dict[str, list[str]] = {}
        for b in await self.list_blocks():
            for ip, a in b.allocated():
                if a.get("node", b.affinity_node) == node:
                    out.setdefault(a["handle"], []).append(ip)
        return out

    async def usage(self) -> list[PoolUsage]:
        """Per pool: size, allocated addresses, blocks, blocks per node."""
        pools = await self.pools()
        out = [PoolUsage(p.name, p.spec.cidr, p.network.num_addresses) for p in pools]
        for b in await self.list_blocks():
            for u, p in zip(out, pools, strict=True):
                if _in_pools(b.network, [p.network]):
                    u.blocks += 1
                    u.allocated += b.allocated_count
                    n = b.affinity_node or "(none)"
                    u.blocks_per_node[n] = u.blocks_per_node.get(n, 0) + 1
                    break
        return out

    async def check(self, workload_ips: Mapping[str, str],
                    nodes: Iterable[str] | None = None) -> CheckReport:
        """Compare the IPAM state with the endpoints (address -> endpoint name; addresses
        may be written as CIDRs) and, if given, the existing node names."""
        wanted: dict[str, str] = {}
        for ip, ep in workload_ips.items():
            wanted[str(ipaddress.ip_interface(ip).ip)] = ep
        blocks = await self.list_blocks()
        report = CheckReport(blocks=len(blocks))
        allocated: dict[str, str] = {}
        counts: dict[str, dict[str, int]] = {}  # cidr -> handle -> count
        for b in blocks:
            counts[b.cidr] = b.handle_counts()
            for ip, a in b.allocated():
                allocated[ip] = a["handle"]
        report.allocated = len(allocated)
        report.leaked = [(ip, h) for ip, h in sorted(allocated.items(),
                                                     key=lambda x: address_order(x[0]))
                         if ip not in wanted]
        report.missing = [(ip, ep) for ip, ep in sorted(wanted.items(),
                                                        key=lambda x: address_order(x[0]))
                          if ip not in allocated]
        if nodes is not None:
            known = set(nodes)
            report.orphan_blocks = [(b.cidr, b.affinity_node or "") for b in blocks
                                    if b.affinity_node and b.affinity_node not in known]
        handle_kvs, _ = await self.store.list(keys.HANDLES)
        recorded: dict[tuple[str, str], int] = {}
        for kv in handle_kvs:
            h = str(kv.value.get("handle") or kv.key[len(keys.HANDLES):])
            for cidr, n in (kv.value.get("blocks") or {}).items():
                recorded[(h, cidr)] = int(n)
                have = counts.get(cidr, {}).get(h, 0)
                if have < int(n):
                    report.dangling_handles.append(
                        (h, f"records {n} address(es) in block {cidr}, which holds {have}"))
        for cidr, per in counts.items():
            for h, n in per.items():
                if recorded.get((h, cidr), 0) < n:
                    report.dangling_handles.append(
                        (h, f"holds {n} address(es) in block {cidr} that its handle "
                            f"document does not record"))
        return report
