"""A small async key/value layer over etcd v3 that the rest of Tortie uses.

Values are JSON objects stored compactly (sorted keys, no spaces).  Every key/value returned
carries the real etcd revisions: ``mod_revision`` is the revision of the last change (for a
write, the revision of the transaction that made it) and is what optimistic concurrency
compares against.

The layer talks to etcd with the gRPC stubs and messages that ``aetcd`` ships
(``aetcd.rpc``) but manages channels, deadlines and watch streams itself:

* aetcd's ``Client.transaction`` drops the response header, so the revision a write
  produced would be lost;
* aetcd connects lazily and without a bound; here every connection attempt is a real
  round trip (``Maintenance.Status``, then ``Authenticate`` with credentials) under the
  configured timeout, endpoint after endpoint, so an unreachable or mute endpoint fails
  with :class:`Unavailable` within the timeout instead of hanging; a member whose Status
  names no leader (cut off from its quorum) is passed over too, so with several endpoints a
  client ends up on a member that can serve;
* aetcd multiplexes all watches over one stream and turns compaction into a fatal error;
  here each watch owns its stream, resumes after errors from the last delivered revision
  and turns compaction into a :class:`Resync`.

A :class:`Store` belongs to the event loop it is first used on.  It implements
:class:`datastore.backend.KVStore`, whose values and errors it re-exports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from datastore.backend import (
    KV,
    TXN_MAX_BYTES,
    TXN_MAX_OPS,
    AlreadyExists,
    Conflict,
    DatastoreError,
    NotFound,
    Resync,
    Unavailable,
    WatchEvent,
    Write,
    check_prefix,
    check_revision,
    check_writes,
    decode_value,
    encode_value,
)
from datastore.etcd_config import EtcdConfig

__all__ = [
    "KV",
    "TXN_MAX_BYTES",
    "TXN_MAX_OPS",
    "AlreadyExists",
    "Conflict",
    "DatastoreError",
    "NotFound",
    "Resync",
    "Store",
    "Unavailable",
    "WatchEvent",
    "Write",
    "decode_value",
    "encode_value",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Keys per page when listing a prefix (all pages are read at one revision).
LIST_PAGE_SIZE = 1000
#: Watch reconnect backoff: first delay, cap (seconds).
WATCH_BACKOFF_MIN = 0.05
WATCH_BACKOFF_MAX = 2.0

_MiB = 1024 * 1024


def _kv(kv: Any) -> KV:
    key = kv.key.decode()
    return KV(key, decode_value(kv.value, key), kv.mod_revision, kv.create_revision)


def _mod_equals(key: bytes, revision: int) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )


def _create_equals(key: bytes, revision: int) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=revision
    )


def _exists(key: bytes) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.CREATE, result=rpc.Compare.GREATER, create_revision=0
    )


def _put_op(key: bytes, raw: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=raw, prev_kv=True))


def _delete_op(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, prev_kv=True))


def _get_op(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


#: what an etcd member says (with code UNKNOWN, or another code than UNAVAILABLE) when it
#: cannot serve a request *now* -- a leader election in progress, a read whose ReadIndex
#: did not come back in time: the request may be tried again, as after UNAVAILABLE
_TRANSIENT_DETAILS = ("context deadline exceeded", "context canceled",
                      "etcdserver: request timed out", "etcdserver: leader changed",
                      "etcdserver: no leader", "etcdserver: too many requests")


def transient(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether an etcd error is a passing one (see :data:`_TRANSIENT_DETAILS`): the caller
    gets :class:`Unavailable` (CNI code 11, "try again later"), not a plain failure."""
    text = (details or "").lower()
    return code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED) and any(
        d in text for d in _TRANSIENT_DETAILS)


@dataclass
class _Connection:
    """One gRPC channel to one endpoint, verified to answer, with its stubs."""

    endpoint: str
    channel: grpc.aio.Channel
    kv: Any
    watch: Any
    maintenance: Any
    metadata: tuple[tuple[str, str], ...] | None


class _StreamEnded(Exception):
    """etcd closed a watch stream without an error."""


class _EndpointDown(Exception):
    """One endpoint did not answer a connection attempt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Store:
    """Async access to etcd: CRUD with optimistic concurrency, list, watch.

    Use as ``async with Store(config) as store: ...``; entering connects (raising
    :class:`Unavailable` if no endpoint answers), but any method connects on demand too.
    After a connection-level failure the next call reconnects, trying the endpoints in
    their configured order.
    """

    def __init__(self, config: EtcdConfig) -> None:
        self._config = config
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def config(self) -> EtcdConfig:
        return self._config

    @property
    def endpoint(self) -> str | None:
        """The endpoint currently connected to, if any."""
        return self._conn.endpoint if self._conn else None

    async def __aenter__(self) -> Self:
        await self._connection()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; running watches end with a :class:`DatastoreError`."""
        self._closed = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- connection management ---------------------------------------------------------

    async def _connection(self) -> _Connection:
        """The current connection, connecting first if there is none.

        Concurrent callers share one connection attempt, so N callers against a dead etcd
        all fail after one attempt (bounded by the timeout per endpoint), not N of them.
        """
        if self._closed:
            raise DatastoreError("the store is closed")
        if self._conn is not None:
            return self._conn
        task = self._connecting
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect())
            task.add_done_callback(self._connect_done)
            self._connecting = task
        # shield: a caller being cancelled must not cancel the attempt the others share.
        return await asyncio.shield(task)

    def _connect_done(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        conn = task.result()
        if self._closed:
            self._closing_task(conn.channel.close())
        else:
            self._conn = conn

    def _closing_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _connect(self) -> _Connection:
        timeout = self._config.timeout
        failures: list[tuple[str, str]] = []
        for endpoint in self._config.endpoints:
            try:
                return await self._connect_one(endpoint)
            except _EndpointDown as e:
                failures.append((endpoint, e.reason))
                log.debug("etcd endpoint %s unavailable: %s", endpoint, e.reason)
        if len(failures) == 1:
            endpoint, reason = failures[0]
            raise Unavailable(
                f"etcd unreachable at {endpoint} (no answer within {timeout}s): {reason}"
            )
        raise Unavailable(
            f"etcd unreachable at {', '.join(self._config.endpoints)} "
            f"(no answer within {timeout}s each): "
            + "; ".join(f"{endpoint}: {reason}" for endpoint, reason in failures)
        )

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        target = endpoint.split("://", 1)[1]
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 256 * _MiB),
            ("grpc.enable_http_proxy", 0),
            # Find dead peers under idle watches; etcd refuses pings more often than 5 s.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", max(1000, int(self._config.timeout * 1000))),
            ("grpc.http2.max_pings_without_data", 0),
            # Come back quickly after an etcd restart.  (Not min_reconnect_backoff_ms: that
            # is also the minimum time a connection attempt/handshake is given.)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if not endpoint.startswith("https://"):
            return grpc.aio.insecure_channel(target, options=options)
        cfg = self._config
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read_file(cfg.ca_cert_file, "CA certificate"),
            private_key=_read_file(cfg.key_file, "client key"),
            certificate_chain=_read_file(cfg.cert_file, "client certificate"),
        )
        return grpc.aio.secure_channel(target, creds, options=options)

    async def _connect_one(self, endpoint: str) -> _Connection:
        timeout = self._config.timeout
        channel = self._channel(endpoint)
        ok = False
        try:
            async with asyncio.timeout(timeout):
                # gRPC connects lazily: make one real round trip so we know the endpoint is
                # an etcd that answers (and the TLS handshake works).
                maintenance = rpc.MaintenanceStub(channel)
                status = await maintenance.Status(rpc.StatusRequest(), timeout=timeout)
                if not status.leader:
                    # A member cut off from its quorum (or in an election) answers Status but
                    # no read or write: try the next endpoint instead of sticking to it.
                    raise _EndpointDown("the member has no leader (cut off from its quorum, "
                                        "or an election is under way)")
                metadata = await self._authenticate(channel, endpoint)
            ok = True
        except TimeoutError:
            raise _EndpointDown("timed out") from None
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _EndpointDown(self._explain(endpoint, e.details() or code.name)) from None
            raise _EndpointDown(
                f"{code.name}: {e.details()} (is this an etcd v3 endpoint?)"
            ) from None
        finally:
            if not ok:
                await channel.close()
        return _Connection(
            endpoint=endpoint,
            channel=channel,
            kv=rpc.KVStub(channel),
            watch=rpc.WatchStub(channel),
            maintenance=maintenance,
            metadata=metadata,
        )

    def _explain(self, endpoint: str, details: str) -> str:
        """Add a hint to the usual TLS failures, which gRPC reports cryptically."""
        cfg = self._config
        hint = ""
        if endpoint.startswith("https://"):
            if "CERTIFICATE_VERIFY_FAILED" in details:
                hint = (
                    "the server's certificate is not trusted: check the CA certificate "
                    f"({cfg.ca_cert_file or 'system CAs'}) and that the certificate is valid "
                    "for the endpoint's host"
                )
            elif "TSI_DATA_CORRUPTED" in details or "BAD_CERTIFICATE" in details:
                hint = (
                    "the server rejected the TLS connection: it probably requires a client "
                    "certificate signed by its CA"
                    + ("" if cfg.cert_file else " and none is configured")
                )
        elif "Socket closed" in details or "Connection reset" in details:
            hint = "the server closed the connection: does it expect https?"
        return f"{details} [{hint}]" if hint else details

    async def _authenticate(
        self, channel: grpc.aio.Channel, endpoint: str
    ) -> tuple[tuple[str, str], ...] | None:
        """Log in with the configured user, if any; returns the metadata for requests."""
        if self._config.username is None:
            return None
        request = rpc.AuthenticateRequest(
            name=self._config.username, password=self._config.password or ""
        )
        try:
            resp = await rpc.AuthStub(channel).Authenticate(request, timeout=self._config.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            raise DatastoreError(
                f"etcd at {endpoint} rejected the login of user {self._config.username!r}: "
                f"{e.details()}"
            ) from None
        return (("token", resp.token),)

    def _invalidate(self, conn: _Connection) -> None:
        """Drop a connection that failed so the next call reconnects (maybe elsewhere).

        Calls still running on it get ``timeout`` seconds to finish.
        """
        if self._conn is not conn:
            return
        self._conn = None
        self._closing_task(conn.channel.close(grace=self._config.timeout))

    def _error(self, e: grpc.aio.AioRpcError, conn: _Connection, what: str) -> DatastoreError:
        code = e.code()
        if self._closed:
            return DatastoreError(f"the store is closed ({what} interrupted)")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self._invalidate(conn)
            return Unavailable(
                f"etcd at {conn.endpoint} did not answer {what} within "
                f"{self._config.timeout}s"
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            self._invalidate(conn)
            return Unavailable(f"etcd unavailable at {conn.endpoint} ({what}): {e.details()}")
        if transient(code, e.details()):  # maybe a member without a leader: try another
            self._invalidate(conn)
            return Unavailable(f"etcd at {conn.endpoint} could not serve {what} now: "
                               f"{code.name}: {e.details()}")
        return DatastoreError(f"etcd at {conn.endpoint}: {what} failed: {code.name}: {e.details()}")

    async def _call(self, what: str, fn: Callable[[_Connection], Awaitable[T]]) -> T:
        """Run one RPC on the current connection, translating gRPC errors."""
        for attempt in range(2):
            conn = await self._connection()
            try:
                return await fn(conn)
            except grpc.aio.AioRpcError as e:
                if (
                    attempt == 0
                    and conn.metadata is not None
                    and e.code() == grpc.StatusCode.UNAUTHENTICATED
                ):
                    # The auth token expired: reconnect (re-authenticate) and retry once.
                    # The request was rejected before being applied, so this is safe.
                    self._invalidate(conn)
                    continue
                raise self._error(e, conn, what) from None
            except asyncio.CancelledError:
                if _cancel_requested():
                    raise
                # Not us being cancelled: gRPC cancels calls on a channel that was closed.
                if self._closed:
                    raise DatastoreError(f"the store is closed ({what} interrupted)") from None
                raise Unavailable(
                    f"{what} on {conn.endpoint} interrupted: the connection was dropped"
                ) from None
        raise AssertionError("unreachable")

    # -- key/value operations ----------------------------------------------------------

    async def _txn(self, what: str, compare: list[Any], success: list[Any],
                   failure: list[Any]) -> Any:
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._call(
            what,
            lambda c: c.kv.Txn(request, timeout=self._config.timeout, metadata=c.metadata),
        )

    def _range(self, request: Any) -> Callable[[_Connection], Awaitable[Any]]:
        async def call(c: _Connection) -> Any:
            return await c.kv.Range(request, timeout=self._config.timeout, metadata=c.metadata)

        return call

    async def get(self, key: str) -> KV:
        """The key's value and revisions; :class:`NotFound` if absent."""
        request = rpc.RangeRequest(key=key.encode())
        resp = await self._call(
            f"get {key}",
            lambda c: c.kv.Range(request, timeout=self._config.timeout, metadata=c.metadata),
        )
        if not resp.kvs:
            raise NotFound(key)
        return _kv(resp.kvs[0])

    async def list(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under ``prefix`` sorted by key, and the store revision of the read.

        Watching from the returned revision misses nothing and repeats nothing.  Large
        prefixes are read in pages, all at the revision of the first page.
        """
        start = check_prefix(prefix)
        range_end = prefix_range_end(start)
        for _ in range(5):
            items: list[KV] = []
            revision = 0
            key = start
            try:
                while True:
                    request = rpc.RangeRequest(
                        key=key, range_end=range_end, limit=LIST_PAGE_SIZE, revision=revision
                    )
                    resp = await self._call(f"list {prefix}", self._range(request))
                    if revision == 0:
                        revision = resp.header.revision
                    items.extend(_kv(kv) for kv in resp.kvs)
                    if not resp.more or not resp.kvs:
                        return items, revision
                    key = resp.kvs[-1].key + b"\0"
            except DatastoreError as e:
                # A compaction overtook a paged read pinned to an old revision: start over.
                if revision == 0 or "compacted" not in str(e):
                    raise
        raise DatastoreError(f"list {prefix}: compacted repeatedly while reading, giving up")

    async def create(self, key: str, value: dict[str, Any]) -> KV:
        """Create the key; :class:`AlreadyExists` if it exists."""
        raw = encode_value(value)
        k = key.encode()
        resp = await self._txn(f"create {key}", [_create_equals(k, 0)], [_put_op(k, raw)], [])
        if not resp.succeeded:
            raise AlreadyExists(key)
        revision = resp.header.revision
        return KV(key, decode_value(raw, key), revision, revision)

    async def update(self, key: str, value: dict[str, Any], revision: int | None = None) -> KV:
        """Replace the value if the key's mod revision is ``revision``.

        :class:`Conflict` if it is not, :class:`NotFound` if the key does not exist.
        With ``revision=None`` the key only has to exist.
        """
        check_revision(revision)
        raw = encode_value(value)
        k = key.encode()
        compare = _exists(k) if revision is None else _mod_equals(k, revision)
        resp = await self._txn(f"update {key}", [compare], [_put_op(k, raw)], [_get_op(k)])
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            if not kvs or revision is None:
                raise NotFound(key)
            raise Conflict(key, revision, kvs[0].mod_revision)
        prev = resp.responses[0].response_put.prev_kv
        return KV(key, decode_value(raw, key), resp.header.revision, prev.create_revision)

    async def put(self, key: str, value: dict[str, Any]) -> KV:
        """Create or replace the key unconditionally."""
        raw = encode_value(value)
        request = rpc.PutRequest(key=key.encode(), value=raw, prev_kv=True)
        resp = await self._call(
            f"put {key}",
            lambda c: c.kv.Put(request, timeout=self._config.timeout, metadata=c.metadata),
        )
        revision = resp.header.revision
        created = resp.prev_kv.create_revision if resp.HasField("prev_kv") else revision
        return KV(key, decode_value(raw, key), revision, created)

    async def delete(self, key: str, revision: int | None = None) -> KV:
        """Delete the key (if its mod revision is ``revision``); returns what was deleted.

        :class:`NotFound` if absent, :class:`Conflict` if the revision differs.
        """
        check_revision(revision)
        k = key.encode()
        compare = _exists(k) if revision is None else _mod_equals(k, revision)
        resp = await self._txn(f"delete {key}", [compare], [_delete_op(k)], [_get_op(k)])
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            if not kvs or revision is None:
                raise NotFound(key)
            raise Conflict(key, revision, kvs[0].mod_revision)
        return _kv(resp.responses[0].response_delete_range.prev_kvs[0])

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        start = check_prefix(prefix)
        request = rpc.DeleteRangeRequest(key=start, range_end=prefix_range_end(start))
        resp = await self._call(
            f"delete prefix {prefix}",
            lambda c: c.kv.DeleteRange(request, timeout=self._config.timeout,
                                       metadata=c.metadata),
        )
        return int(resp.deleted)

    async def compare_and_swap(self, key: str, value: dict[str, Any] | None,
                               revision: int) -> bool:
        """Atomically set (or, with ``value=None``, delete) the key if its mod revision is
        ``revision`` (0: if the key does not exist).  Returns whether it happened."""
        if revision < 0:
            raise ValueError(f"revision must not be negative, got {revision}")
        k = key.encode()
        compare = _create_equals(k, 0) if revision == 0 else _mod_equals(k, revision)
        op = _delete_op(k) if value is None else _put_op(k, encode_value(value))
        resp = await self._txn(f"compare-and-swap {key}", [compare], [op], [])
        return bool(resp.succeeded)

    async def get_many(self, keys: Sequence[str], prefixes: Sequence[str] = ()
                       ) -> dict[str, KV]:
        """Those of ``keys`` that exist and every key under ``prefixes``, all read at one
        revision (in transactions of :data:`TXN_MAX_OPS` reads; a prefix is one read,
        unpaged)."""
        ranges = [(k.encode(), b"") for k in keys]
        for prefix in prefixes:
            start = check_prefix(prefix)
            ranges.append((start, prefix_range_end(start)))
        found: dict[str, KV] = {}
        revision = 0
        for start in range(0, len(ranges), TXN_MAX_OPS):
            part = ranges[start:start + TXN_MAX_OPS]
            ops = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k, range_end=end,
                                                                revision=revision))
                   for k, end in part]
            resp = await self._txn(f"get {len(part)} keys", [], ops, [])
            revision = revision or resp.header.revision
            for r in resp.responses:
                for kv in r.response_range.kvs:
                    item = _kv(kv)
                    found[item.key] = item
        return found

    async def commit(self, writes: Sequence[Write]) -> int | None:
        """Make all ``writes`` in one transaction if every key still has the revision it is
        expected to have; returns the transaction's revision, or None when one of them
        changed (then nothing was written).  At most :data:`TXN_MAX_OPS` writes, each key
        once."""
        check_writes(writes)
        compare, ops = [], []
        for w in writes:
            k = w.key.encode()
            compare.append(_create_equals(k, 0) if w.revision == 0 else _mod_equals(k, w.revision))
            ops.append(_delete_op(k) if w.value is None else _put_op(k, encode_value(w.value)))
        what = f"write {writes[0].key}" if len(writes) == 1 else \
            f"write {len(writes)} keys ({writes[0].key}, ...)"
        resp = await self._txn(what, compare, ops, [])
        return int(resp.header.revision) if resp.succeeded else None

    async def revision(self) -> int:
        """The current store revision (a linearizable read)."""
        request = rpc.RangeRequest(key=b"/tortie/", count_only=True)
        resp = await self._call(
            "read revision",
            lambda c: c.kv.Range(request, timeout=self._config.timeout, metadata=c.metadata),
        )
        return int(resp.header.revision)

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (waits until it is physically applied).

        Compacting at or below an already compacted revision does nothing.
        """
        request = rpc.CompactionRequest(revision=revision, physical=True)
        try:
            await self._call(
                f"compact at {revision}",
                lambda c: c.kv.Compact(request, timeout=self._config.timeout,
                                       metadata=c.metadata),
            )
        except DatastoreError as e:
            if type(e) is DatastoreError and "has been compacted" in str(e):
                return
            raise

    # -- watch -------------------------------------------------------------------------

    def watch(self, prefix: str, revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        """Every change under ``prefix`` after ``revision``, once each and in order.

        If that history has been compacted (also while reconnecting), yields one
        :class:`Resync` with the full current state of the prefix and continues after it.
        Connection errors are retried with capped backoff, resuming after the last
        delivered revision.  Closing the generator (or cancelling the task consuming it)
        cancels the etcd watch.  Ends with :class:`DatastoreError` when the store is closed
        or etcd refuses the watch.
        """
        key = check_prefix(prefix)
        if revision < 0:
            raise ValueError(f"revision must not be negative, got {revision}")
        return self._watch(prefix, key, revision)

    async def _watch(self, prefix: str, key: bytes,
                     revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        range_end = prefix_range_end(key)
        timeout = self._config.timeout
        next_rev = revision + 1  # first revision not delivered yet
        need_resync = False
        relogged = False
        backoff = WATCH_BACKOFF_MIN
        while True:
            if self._closed:
                raise DatastoreError(f"the store is closed (watch on {prefix} ended)")
            conn: _Connection | None = None
            call: Any = None
            failure: Exception | None = None
            try:
                if need_resync:
                    items, rev = await self.list(prefix)
                    need_resync = False
                    next_rev = rev + 1
                    yield Resync(items, rev)
                conn = await self._connection()
                call = conn.watch.Watch(metadata=conn.metadata)
                create = rpc.WatchCreateRequest(
                    key=key,
                    range_end=range_end,
                    start_revision=next_rev,
                    prev_kv=True,
                    progress_notify=True,
                )
                async with asyncio.timeout(timeout):
                    await call.write(rpc.WatchRequest(create_request=create))
                    resp = await call.read()
                while True:
                    if resp is grpc.aio.EOF:
                        raise _StreamEnded("etcd closed the watch stream")
                    if resp.compact_revision:
                        log.info("watch %s: revision %d compacted (compacted up to %d), "
                                 "resyncing", prefix, next_rev, resp.compact_revision)
                        need_resync = True
                        break
                    if resp.canceled:
                        if conn.metadata is not None and not relogged:
                            # Most likely our auth token expired (etcd says "permission
                            # denied"): log in again on a new connection and retry once.
                            relogged = True
                            self._invalidate(conn)
                            break
                        raise DatastoreError(
                            f"etcd at {conn.endpoint} cancelled the watch on {prefix}: "
                            f"{resp.cancel_reason or 'no reason given'}"
                        )
                    if resp.created:
                        backoff = WATCH_BACKOFF_MIN
                        relogged = False
                    elif resp.events:
                        for ev in resp.events:
                            yield _event(ev)
                        next_rev = resp.events[-1].kv.mod_revision + 1
                    else:
                        # Progress notification: nothing under the prefix up to here.
                        next_rev = max(next_rev, resp.header.revision + 1)
                    resp = await call.read()
            except asyncio.CancelledError:
                if _cancel_requested():
                    raise
                # gRPC cancels the calls of a channel that was closed (store closed, or the
                # connection dropped after an error): reconnect.
                failure = _StreamEnded("the connection was closed")
            except (grpc.aio.AioRpcError, Unavailable, TimeoutError, _StreamEnded) as e:
                failure = e
            finally:
                if call is not None:
                    call.cancel()
            if failure is None or self._closed:
                continue
            if isinstance(failure, grpc.aio.AioRpcError):
                code = failure.code()
                if code in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNIMPLEMENTED,
                ):
                    raise DatastoreError(
                        f"watch on {prefix} failed: {code.name}: {failure.details()}"
                    ) from None
                detail = f"{code.name}: {failure.details()}"
            else:
                detail = str(failure) or type(failure).__name__
            if conn is not None and not isinstance(failure, _StreamEnded):
                self._invalidate(conn)
            log.warning("watch %s interrupted (%s); resuming from revision %d in %.2fs",
                        prefix, detail, next_rev, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_BACKOFF_MAX)


def _cancel_requested() -> bool:
    """Whether the running task is being cancelled (as opposed to a gRPC call having been
    cancelled under it because its channel was closed)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _event(ev: Any) -> WatchEvent:
    kv = ev.kv
    key = kv.key.decode()
    prev: dict[str, Any] | None = None
    if ev.HasField("prev_kv") and ev.prev_kv.key:
        prev = decode_value(ev.prev_kv.value, key)
    if ev.type == rpc.Event.DELETE:
        return WatchEvent("delete", key, None, kv.mod_revision, prev)
    return WatchEvent("put", key, decode_value(kv.value, key), kv.mod_revision, prev)


def _read_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DatastoreError(f"cannot read etcd {what} file {path!r}: {e.strerror}") from None
