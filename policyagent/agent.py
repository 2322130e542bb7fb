"""The policy agent: datastore -> :class:`PolicyCalculator` -> nftables.

::

    Syncer(resource prefixes) --on_update--> parse -> calc.update --wake--> program loop
    CNI ADD --endpoint_ready(wep)--> calc.update --wake--> program loop --> ADD returns

* One :class:`~datastore.syncer.Syncer` mirrors every prefix the calculator consumes
  (:data:`PREFIXES`); each value is parsed with its kind's model. A resource that does not
  parse (or that the calculator refuses) is logged, counted in
  ``tortie_policy_skipped_resources_total`` and skipped: the last good version stays in force.
* The program loop coalesces: it wakes on a change -- one nobody waits for (a watch event)
  first waits :data:`UNWAITED_DELAY` for more, or until a CNI ADD waits --, lets every event
  already queued in the loop run, computes the model and programs the kernel with the
  smallest transaction (:func:`nft_render.render_incremental`), counted by what changed: IP
  set members only (``sets``), policy / profile rules (``chain``), endpoints, sets or
  policies coming or going (``endpoints``), else the whole table (``full``). The first
  programming after the first full sync, and the one after any error, is always ``full``. A
  full programming replaces the table in one ``nft -f`` transaction (never a delete on its
  own): the table of a previous run stays in force until then, and nothing is removed at
  stop, so a restart opens no window without policy.
* :meth:`PolicyAgent.endpoint_ready` is the CNI handler's hook: the endpoint it just wrote is
  fed to the calculator at once (not waiting for the watch), and the call returns once a
  programming that includes it has reached the kernel -- the pod's first packet meets its
  policy. Concurrent ADDs share one programming: an ADD announces its endpoint when it
  starts (:meth:`PolicyAgent.endpoint_coming`), and a programming some ADD waits
  for first waits up to :data:`COMING_WAIT` for the announced endpoints still on their way
  (so under churn one nft transaction serves several pods; a lone ADD never waits).
* nft runs in the agent's own network namespace (tortie-node's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from pydantic import ValidationError

from agentkit.agent import Agent, NodeContext
from agentkit.backoff import RETRY_MIN, Backoff
from agentkit.health import HEARTBEAT_INTERVAL, Heartbeat
from agentkit.metrics import DEFAULT_BUCKETS
from datastore.keys import parse_resource_key, resource_key, resource_prefix
from datastore.kinds import by_plural, plurals
from datastore.model_config import FelixConfiguration
from datastore.model_endpoints import WorkloadEndpoint
from datastore.syncer import Syncer, cancel_and_wait
from datastore.unsupported import IgnoredFieldLog
from policyagent import nft_apply, nft_render
from policyagent.applier import Applier, NftApplier
from policyagent.calc import PolicyCalculator
from policyagent.hep_resolve import read_interfaces, resolve
from policyagent.model import DataplaneModel
from policyagent.nft_render import render

log = logging.getLogger("tortie.policy")

TABLE = nft_render.DEFAULT_TABLE
#: The datastore kinds (plurals) the calculation consumes. (Tortie stores no Tier or
#: ServiceAccount kind: every policy is in the default tier, ``ksa.`` profiles have only the
#: service account's name as label.)
PLURALS = plurals(PolicyCalculator.handles)
PREFIXES = tuple(resource_prefix(p) for p in PLURALS)
#: The kinds whose fields Tortie does not act on this agent logs (the routing agent logs
#: IPPool, Node and the BGP kinds).
IGNORED_FIELDS_KINDS = frozenset({
    "GlobalNetworkPolicy", "NetworkPolicy", "Profile", "WorkloadEndpoint", "HostEndpoint",
    "NetworkSet", "GlobalNetworkSet", "FelixConfiguration"})
READY_TIMEOUT = 30.0        # endpoint_ready: longest wait for sync + programming
#: how long a change nobody waits for (a watch event: a pod gone, a policy or label changed)
#: waits for more before it is programmed; a CNI ADD waiting ends the wait at once.  Under
#: pod churn this turns one nft transaction per DEL into one per few (each transaction makes
#: the kernel validate the table's whole jump graph).
UNWAITED_DELAY = 0.02
#: the longest a programming an ADD waits for holds on for other ADDs' endpoints on their way
COMING_WAIT = 0.01
COUNTERS_MIN_INTERVAL = 5.0  # per-rule counters are read from nft at most this often
INTERFACES_POLL = 2.0  # host interfaces/addresses (host endpoint resolution) re-read this often
_WEP_PLURAL = "workloadendpoints"
#: Workload -> host traffic allowed by the workload's egress policy: accepted, as Calico's
#: Kubernetes manifests configure Felix (``FELIX_DEFAULTENDPOINTTOHOSTACTION=ACCEPT``; Felix's
#: own default is Drop). A FelixConfiguration's ``defaultEndpointToHostAction`` overrides it.
DEFAULT_ENDPOINT_TO_HOST = "accept"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("policy agent")
    g.add_argument("--no-policy", action="store_true",
                   help="do not run the policy agent (no nftables policy is programmed)")
    g.add_argument("--policy-table", default=TABLE,
                   help=f"name of the nftables inet table the policy agent owns "
                        f"(default {TABLE})")
    g.add_argument("--policy-counters-interval", type=float, default=COUNTERS_MIN_INTERVAL,
                   help="read per-rule packet counters from nft at most every S seconds, on "
                        "scrape (0: never)")


def make_agent(ctx: NodeContext) -> Agent | None:
    if getattr(ctx.args, "no_policy", False):
        log.info("policy agent disabled (--no-policy)")
        return None
    prefix = getattr(ctx.args, "interface_prefix", nft_render.WORKLOAD_PREFIX)
    if prefix != nft_render.WORKLOAD_PREFIX:
        log.warning("the policy agent polices workload interfaces named "
                    f"{nft_render.WORKLOAD_PREFIX}*: pods on {prefix}* interfaces get no "
                    "workload policy", extra={"fields": {"interface_prefix": prefix}})
    return PolicyAgent(ctx, table=getattr(ctx.args, "policy_table", TABLE),
                       counters_interval=getattr(ctx.args, "policy_counters_interval",
                                                 COUNTERS_MIN_INTERVAL))


def node_ports(args: argparse.Namespace) -> tuple[int, ...]:
    """The TCP ports tortie-node listens on that its workloads are kept off: that of
    ``--metrics-address`` (its metrics and health routes, whatever the port; port 0, a free
    port picked at start, is not known here and is not protected)."""
    port = getattr(args, "metrics_port", None)
    return (port,) if isinstance(port, int) and port > 0 else ()


class PolicyAgent:
    name = "policy"

    def __init__(self, ctx: NodeContext, *, table: str = TABLE, netns: str | None = None,
                 counters_interval: float = COUNTERS_MIN_INTERVAL,
                 applier: Applier | None = None) -> None:
        self.ctx = ctx
        self.node = ctx.node
        self.table = table
        self.netns = netns
        self.counters_interval = counters_interval
        #: first delay of the retries after a failed programming (doubling, at most 10 s)
        self.retry_first = RETRY_MIN
        #: where the rendered table goes (nft in ``netns`` unless a test gives another)
        self.applier: Applier = applier or NftApplier(table, netns)
        self.ready = asyncio.Event()
        self.heartbeat = Heartbeat()
        # the etcd this node uses, and tortie-node's own metrics/health port, are protected
        # from its workloads whatever their ports
        config = getattr(ctx.store, "config", None)  # no store: a test of the flags only
        self.calc = PolicyCalculator(ctx.node, datastore_ports=config.ports if config else (),
                                     node_ports=node_ports(ctx.args))
        self._syncer: Syncer | None = None
        self._wake = asyncio.Event()
        self._waited = asyncio.Event()  # a CNI ADD waits for the next programming
        self._coming = 0  # ADDs that announced an endpoint not yet handed to endpoint_ready
        self._came = asyncio.Event()  # one of them arrived (or gave up)
        self.unwaited_delay = UNWAITED_DELAY
        self._synced = False
        self._waiters: list[asyncio.Future[None]] = []
        self._applied: DataplaneModel | None = None  # what the kernel has (None: unknown)
        self._need_full = True  # the next programming replaces the whole table
        # endpoints fed by endpoint_ready that the watch has not delivered yet
        self._injected: dict[str, WorkloadEndpoint] = {}
        self._wep_ips: dict[str, tuple[str, ...]] = {}  # workload endpoint key -> ipNetworks
        self._ip_owner: dict[str, str] = {}  # ipNetwork -> the endpoint key holding it
        self._interfaces: dict[str, list[str]] | None = None  # host interfaces -> addresses
        self._felix: dict[str, FelixConfiguration] = {}
        self._ignored = IgnoredFieldLog("policy", IGNORED_FIELDS_KINDS)
        self._endpoint_to_host = DEFAULT_ENDPOINT_TO_HOST
        self.last_program: float | None = None
        self.last_program_kind = ""
        self.last_error = ""
        self.programs = 0
        self._counters_at = 0.0
        self._counters: dict[str, tuple[int, int]] = {}
        self._counter_task: asyncio.Task[None] | None = None
        m = ctx.metrics
        self.m_programs = Counter(
            "tortie_policy_programs_total", "nftables programmings, by kind (full, sets, "
            "chain, endpoints)", ("kind",), registry=m)
        self.m_duration = Histogram(
            "tortie_policy_program_duration_seconds",
            "Time to compute, render and apply one programming, by kind", ("kind",),
            buckets=DEFAULT_BUCKETS, registry=m)
        self.m_errors = Counter(
            "tortie_policy_program_errors_total", "Programmings nft refused, by kind", ("kind",),
            registry=m)
        self.m_skipped = Counter(
            "tortie_policy_skipped_resources_total",
            "Resources skipped because they do not parse or the calculation refused them",
            ("kind",), registry=m)
        self.m_endpoints = Gauge(
            "tortie_policy_endpoints", "Local endpoints programmed, by kind", ("kind",),
            registry=m)
        self.m_policies = Gauge(
            "tortie_policy_policies", "Policy and profile programs in the table (per direction)",
            ("kind",), registry=m)
        self.m_ipsets = Gauge("tortie_policy_ipsets", "IP sets in the table", registry=m)
        self.m_ready_wait = Histogram(
            "tortie_policy_endpoint_ready_seconds",
            "From a CNI ADD's endpoint to its policy in the kernel", buckets=DEFAULT_BUCKETS,
            registry=m)
        self.m_synced = Gauge("tortie_policy_synced", "1 once the first full sync is in",
                              registry=m)
        m.register(_NftRuleCounters(self._rule_counter_values))

    # --- life cycle -----------------------------------------------------------------------

    async def run(self) -> None:
        previous = self._syncer
        self._syncer = Syncer(self.ctx.store, PREFIXES, self._on_update, self._on_synced,
                              name="policy")
        if previous is not None:
            # run again after a failure: the calculator holds what the old syncer delivered,
            # so the new one starts from that and delivers only the differences (deletes too)
            self._syncer.cache = dict(previous.cache)
            self._need_full = True  # the kernel's state is unknown
            self._synced = False  # ... once the new syncer has listed everything
            self.m_synced.set(0)
        await self._read_interfaces()
        sync_task = asyncio.create_task(self._syncer.run(), name="policy-syncer")
        iface_task = asyncio.create_task(self._watch_interfaces(), name="policy-interfaces")
        try:
            await self._program_loop()
        finally:
            await cancel_and_wait(iface_task)
            await cancel_and_wait(sync_task)

    async def _read_interfaces(self) -> None:
        """Host endpoints resolve against the host's interfaces and addresses (expectedIPs,
        ``interfaceName: "*"``; see policyagent/hep_resolve.py): a change re-programs."""
        try:
            ifaces = await asyncio.to_thread(read_interfaces, self.netns)
        except Exception as e:
            log.warning("cannot list host interfaces", extra={"fields": {"error": str(e)}})
            return
        if ifaces != self._interfaces:
            self._interfaces = ifaces
            self._wake.set()

    async def _watch_interfaces(self) -> None:
        while True:
            await asyncio.sleep(INTERFACES_POLL)
            await self._read_interfaces()

    async def close(self) -> None:
        """Leave the table as it is: the next run replaces it atomically."""
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(RuntimeError("the policy agent is stopping"))
        self._waiters.clear()

    def health(self) -> dict[str, Any]:
        model = self._applied
        return {
            "synced": self._synced,
            "ready": self.ready.is_set(),
            "last_program": self.last_program,
            "last_program_kind": self.last_program_kind,
            "programs": self.programs,
            "endpoints": len(model.endpoints) if model else 0,
            "host_endpoints": len(model.host_endpoints) if model else 0,
            "policies": len(model.policies) if model else 0,
            "ipsets": len(model.ipsets) if model else 0,
            "last_error": self.last_error,
        }

    # --- input ----------------------------------------------------------------------------

    def _on_update(self, key: str, value: dict[str, Any] | None) -> None:
        injected = self._injected.pop(key, None)
        if (injected is not None and value is not None and self._syncer is not None
                and injected.metadata.resourceVersion == str(self._syncer.revision)):
            return  # the CNI ADD's own write (its revision), programmed by endpoint_ready
        try:
            plural, _, _ = parse_resource_key(key)
        except ValueError:
            self.m_skipped.labels(kind="unknown").inc()
            return
        if value is None:
            self._ignored.update(key, None)
            if plural == "felixconfigurations":
                self._felix.pop(key, None)
                self._update_endpoint_to_host()
            elif plural == _WEP_PLURAL:
                self._index_wep(key, None)
            self._feed(plural, key, None)
            return
        try:
            resource = by_plural(plural).model.model_validate(value)
        except (ValidationError, ValueError, TypeError, KeyError) as e:
            self.m_skipped.labels(kind=plural).inc()
            log.warning("skipping a resource that does not parse", extra={"fields": {
                "key": key, "error": str(e).replace("\n", "; ")[:500]}})
            return
        self._ignored.update(key, resource)
        if plural == "felixconfigurations":
            self._felix[key] = resource
            self._update_endpoint_to_host()
        elif plural == _WEP_PLURAL:
            if injected is not None and _same_endpoint(injected, resource):
                return  # the CNI ADD's own write, programmed already by endpoint_ready
            self._index_wep(key, resource)
        self._feed(plural, key, resource)

    def _index_wep(self, key: str, wep: WorkloadEndpoint | None) -> None:
        for ip in self._wep_ips.pop(key, ()):
            if self._ip_owner.get(ip) == key:
                del self._ip_owner[ip]
        if wep is not None:
            ips = tuple(wep.spec.ipNetworks or ())
            self._wep_ips[key] = ips
            for ip in ips:
                self._ip_owner[ip] = key

    def _feed(self, plural: str, key: str, resource: Any | None) -> None:
        try:
            self.calc.update(plural, key, resource)
        except Exception as e:
            self.m_skipped.labels(kind=plural).inc()
            log.warning("the policy calculation refused a resource; skipped", extra={
                "fields": {"key": key, "error": f"{type(e).__name__}: {e}"}})
            return
        self._wake.set()

    def _on_synced(self) -> None:
        # endpoints fed by endpoint_ready that the datastore no longer has (an ADD rolled back
        # while the watch was resyncing) would otherwise stay forever
        cache = self._syncer.cache if self._syncer is not None else {}
        for key in [k for k in self._injected if k not in cache]:
            del self._injected[key]
            self._index_wep(key, None)
            self._feed(_WEP_PLURAL, key, None)
        if not self._synced:
            log.info("policy agent: first full sync done",
                     extra={"fields": {"resources": len(cache)}})
        self._synced = True
        self.m_synced.set(1)
        self._wake.set()

    def _update_endpoint_to_host(self) -> None:
        action = None
        for name in (f"node.{self.node}", "default"):
            cfg = self._felix.get(resource_key("felixconfigurations", name))
            if cfg is not None and cfg.spec.defaultEndpointToHostAction:
                action = cfg.spec.defaultEndpointToHostAction
                break
        action_to_host = (action or DEFAULT_ENDPOINT_TO_HOST).lower()
        if action_to_host != self._endpoint_to_host:
            self._endpoint_to_host = action_to_host
            self._need_full = True  # the base chains change
            self._wake.set()

    # --- the CNI hooks --------------------------------------------------------------------

    def endpoint_coming(self) -> Callable[[], None]:
        """A CNI ADD will soon hand an endpoint to :meth:`endpoint_ready`; the call returned
        ends the announcement (the ADD calls it once: just before :meth:`endpoint_ready`,
        or when it fails).  A programming an ADD waits for holds on for announced endpoints,
        at most :data:`COMING_WAIT`, so that one programming serves them all."""
        self._coming += 1
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._coming -= 1
                self._came.set()
        return end

    async def endpoint_ready(self, wep: WorkloadEndpoint) -> None:
        """Program ``wep`` (just written by a CNI ADD) and return once the kernel has it."""
        start = time.monotonic()
        key = resource_key(_WEP_PLURAL, wep.name, wep.namespace)
        if self._syncer is None or key not in self._syncer.cache:
            self._injected[key] = wep
        # IPAM gave this endpoint its addresses, so whoever held them before is gone -- even if
        # the watch has not said so yet: its labels must not reach the new pod's traffic
        for ip in wep.spec.ipNetworks or ():
            owner = self._ip_owner.get(ip)
            if owner is not None and owner != key:
                log.info("an endpoint's address went to a new pod: forgetting the old endpoint",
                         extra={"fields": {"old": owner, "new": key, "ip": ip}})
                self._index_wep(owner, None)
                self._feed(_WEP_PLURAL, owner, None)
        self._index_wep(key, wep)
        self._feed(_WEP_PLURAL, key, wep)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake.set()
        self._waited.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), READY_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(
                f"policy for {wep.namespace}/{wep.name} not programmed within "
                f"{READY_TIMEOUT:g}s (synced: {self._synced}; last error: "
                f"{self.last_error or 'none'})") from None
        self.m_ready_wait.observe(time.monotonic() - start)

    # --- programming ----------------------------------------------------------------------

    async def _program_loop(self) -> None:
        backoff = Backoff(self.retry_first)
        while True:
            self.heartbeat.beat()
            try:
                async with asyncio.timeout(HEARTBEAT_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                continue  # idle: the beat says the loop is alive
            self._wake.clear()
            if not self._synced:
                continue  # never program a partial view; waiters wait for the sync
            if not self._waiters and self.unwaited_delay > 0 and self._applied is not None:
                # nobody waits: let more changes come (coalesce), unless an ADD starts waiting
                self._waited.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.unwaited_delay):
                        await self._waited.wait()
            elif self._waiters and self._coming:
                await self._gather_coming()
            await asyncio.sleep(0)  # let events already queued in the loop land (coalesce)
            self._wake.clear()
            waiters, self._waiters = self._waiters, []
            try:
                await self._program_once()
            except asyncio.CancelledError:
                self._waiters[:0] = waiters
                raise
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("programming nftables failed; a full programming follows",
                          extra={"fields": {"error": self.last_error[:2000],
                                            "retry_s": f"{backoff.delay:g}"}})
                self._need_full = True
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"policy programming failed: {e}"))
                await asyncio.sleep(backoff.next())
                self._wake.set()
                continue
            backoff.reset()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            if not self.ready.is_set():
                self.ready.set()

    async def _gather_coming(self) -> None:
        """Wait (at most :data:`COMING_WAIT`) for the endpoints ADDs announced to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMING_WAIT
        while self._coming:
            self._came.clear()
            left = deadline - loop.time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._came.wait()

    async def _program_once(self) -> None:
        start = time.monotonic()
        model = resolve(self.calc.model(), self._interfaces)
        old = None if self._need_full else self._applied
        self._need_full = False
        kind, script = "full", ""
        if old is not None:
            if old == model:
                return
            try:
                kind, script = self._incremental(old, model)
            except Exception:  # a renderer bug must not cost more than a full programming
                log.exception("incremental rendering failed; programming the whole table")
                kind = "full"
        if kind == "full":
            script = render(model, self.table, endpoint_to_host=self._endpoint_to_host)
        try:
            await asyncio.to_thread(self.applier.apply_full if kind == "full"
                                    else self.applier.apply_incremental, script)
        except nft_apply.NftError:
            self.m_errors.labels(kind=kind).inc()
            if kind == "full":
                raise
            log.warning("incremental programming refused; programming the whole table",
                        extra={"fields": {"kind": kind}})
            kind = "full"
            try:
                script = render(model, self.table, endpoint_to_host=self._endpoint_to_host)
                await asyncio.to_thread(self.applier.apply_full, script)
            except nft_apply.NftError:
                self.m_errors.labels(kind=kind).inc()
                raise
        self._applied = model
        took = time.monotonic() - start
        self.programs += 1
        self.last_program = time.time()
        self.last_program_kind = kind
        self.last_error = ""
        self.m_programs.labels(kind=kind).inc()
        self.m_duration.labels(kind=kind).observe(took)
        self.m_endpoints.labels(kind="workload").set(len(model.endpoints))
        self.m_endpoints.labels(kind="host").set(len(model.host_endpoints))
        self.m_policies.labels(kind="policy").set(len(model.policies))
        self.m_policies.labels(kind="profile").set(len(model.profiles))
        self.m_ipsets.set(len(model.ipsets))
        log.log(logging.INFO if kind == "full" else logging.DEBUG, "policy programmed",
                extra={"fields": {"kind": kind, "ms": f"{took * 1000:.1f}",
                                  "endpoints": len(model.endpoints),
                                  "host_endpoints": len(model.host_endpoints),
                                  "policies": len(model.policies),
                                  "ipsets": len(model.ipsets)}})

    def _incremental(self, old: DataplaneModel, model: DataplaneModel) -> tuple[str, str]:
        """The smallest transaction from ``old`` (in the kernel) to ``model``: ("sets" |
        "chain" | "endpoints", script), or ("full", "") when only a full render will do."""
        diff = old.diff(model)
        structural = bool(diff.endpoints or diff.host_endpoints or diff.failsafe_changed
                          or diff.protected_changed
                          or diff.ipsets.added or diff.ipsets.removed
                          or diff.policies.added or diff.policies.removed
                          or diff.profiles.added or diff.profiles.removed)
        script = nft_render.render_incremental(old, model, self.table, diff)
        if script is None:
            return "full", ""
        # members only, unless a set became empty or got its first member: the chains of
        # the policies using it are then refilled too
        sets_only = diff.members_only and not (
            nft_render.refilled_programs(old, model, diff)
            or nft_render.refilled_programs(old, model, diff, profiles=True))
        return ("endpoints" if structural else "sets" if sets_only else "chain"), script

    # --- counters -------------------------------------------------------------------------

    def _rule_counter_values(self) -> dict[str, tuple[int, int]]:
        """The per-rule counters as last read; a scrape finding them older than
        ``counters_interval`` starts a read in a thread (the next scrape shows it), so a
        scrape never blocks the event loop on nft and nobody scraping costs nothing."""
        if self.counters_interval <= 0 or self._applied is None:
            return self._counters
        now = time.monotonic()
        if now - self._counters_at >= self.counters_interval and self._counter_task is None:
            self._counters_at = now
            try:
                self._counter_task = asyncio.get_running_loop().create_task(
                    self._read_counters())
            except RuntimeError:  # no loop running here: read now
                with contextlib.suppress(nft_apply.NftError, OSError, ValueError):
                    self._counters = self.applier.read_counters()
        return self._counters

    async def _read_counters(self) -> None:
        try:
            self._counters = await asyncio.to_thread(self.applier.read_counters)
        except (nft_apply.NftError, OSError, ValueError) as e:
            log.debug("cannot read rule counters", extra={"fields": {"error": str(e)}})
        finally:
            self._counter_task = None


class _NftRuleCounters(Collector):
    """The nft per-rule counters, read on scrape: ``tortie_policy_rule_packets_total`` and
    ``tortie_policy_rule_bytes_total`` by ``rule_id``."""

    def __init__(self, values: Callable[[], dict[str, tuple[int, int]]]) -> None:
        self.values = values

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(self._families({}))

    def collect(self) -> Iterator[CounterMetricFamily]:
        return iter(self._families(self.values()))

    @staticmethod
    def _families(values: dict[str, tuple[int, int]]) -> list[CounterMetricFamily]:
        packets = CounterMetricFamily("tortie_policy_rule_packets",
                                      "Packets matched per policy rule (nft counters)",
                                      labels=("rule_id",))
        octets = CounterMetricFamily("tortie_policy_rule_bytes",
                                     "Bytes matched per policy rule (nft counters)",
                                     labels=("rule_id",))
        for rule_id, (n_packets, n_bytes) in sorted(values.items()):
            packets.add_metric((rule_id,), n_packets)
            octets.add_metric((rule_id,), n_bytes)
        return [packets, octets]


def _same_endpoint(a: WorkloadEndpoint, b: WorkloadEndpoint) -> bool:
    """Whether two versions of an endpoint are the same to the policy calculation."""
    return a.spec == b.spec and (a.metadata.labels or {}) == (b.metadata.labels or {})
