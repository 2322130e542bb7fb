"""BGP passwords: the keys of Secrets that BGPPeers / the BGPConfiguration reference, copied
into the datastore for tortie-node (layout: :mod:`datastore.bgp_secrets`).

Inputs: the Secrets of one namespace (``--bgp-secrets-namespace``, where tortie-node runs;
a reflector on ``/api/v1/namespaces/<ns>/secrets``), and the datastore's ``bgppeers`` and
``bgpconfigurations``.  For every Secret some password references, the referenced keys
(base64-decoded) go to ``/tortie/secrets/v3/bgp/<secret>``; nothing else of the Secret is
copied, and a Secret nobody references (or no longer references, or that was deleted) has
no copy.  Nothing is written or removed until the Secrets and both datastore kinds are
listed, so a restart never drops the passwords the nodes use.

A referenced Secret or key that does not exist is counted in
``tortie_kc_bgp_password_refs_missing``, and when that changes (a Secret newly missing, a
different set of keys or referencing resources) it is logged and reported as a Kubernetes
``Warning`` Event in that namespace about the Secret (``involvedObject`` ``Secret``
``<namespace>/<name>``, reason :data:`REASON_SECRET_MISSING` or :data:`REASON_KEY_MISSING`,
the message naming the keys and the BGPPeers / BGPConfiguration referencing them; see
:mod:`kubecontrollers.events`: the same event again counts up on one Event).  tortie-node
keeps those peerings down meanwhile (docs/bgp.md).
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from datastore import bgp_secrets
from datastore.keys import BGP_SECRETS
from datastore.model_base import ResourceInvalid
from datastore.model_bgp import BGPConfiguration, BGPPeer
from kubecontrollers.controller import (
    FULL,
    Context,
    Controller,
    delete_if_present,
    put_if_changed,
    split_key,
)
from kubecontrollers.datastore_cache import DatastoreCache
from kubecontrollers.events import WARNING, EventRecorder
from kubecontrollers.reflector import Reflector

log = logging.getLogger("tortie.kc.bgpsecrets")

REASON_SECRET_MISSING = "BGPPasswordSecretMissing"
REASON_KEY_MISSING = "BGPPasswordKeyMissing"


def decoded(obj: dict[str, Any], wanted: set[str]) -> tuple[dict[str, str], set[str]]:
    """The ``wanted`` keys of a Secret object, decoded; and the wanted keys it lacks (absent,
    or not base64 of UTF-8 text)."""
    raw = obj.get("data") or {}
    out: dict[str, str] = {}
    for k in sorted(wanted):
        v = raw.get(k)
        if not isinstance(v, str):
            continue
        try:
            out[k] = base64.b64decode(v, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
    return out, wanted - set(out)


class BGPSecretController(Controller):
    name = "bgpsecrets"
    config_section = "node"

    def __init__(self, ctx: Context, reflector: Reflector, peers: DatastoreCache,
                 configs: DatastoreCache, namespace: str,
                 events: EventRecorder | None = None) -> None:
        super().__init__(ctx)
        self.reflector = reflector
        self.peers = peers
        self.configs = configs
        self.namespace = namespace
        self.events = events
        self.missing: dict[str, set[str]] = {}   # secret -> referenced keys not found
        self.referrers: dict[tuple[str, str], list[str]] = {}  # (secret, key) -> resources
        self.reported: dict[str, tuple[str, str]] = {}  # secret -> (reason, message) reported
        self.bad_resources = 0
        reflector.add_listener(self._on_secret)
        reflector.synced_listeners.append(self.on_synced)
        for cache in (peers, configs):
            cache.listeners.append(lambda name, value: self.queue.add(FULL))
            cache.synced_listeners.append(self.on_synced)

    def _on_secret(self, key: str, old: Any, new: Any) -> None:
        ns, name = split_key(key)
        if ns == self.namespace:
            self.queue.add(name)

    def _ready(self) -> bool:
        return (self.reflector.synced.is_set() and self.peers.synced.is_set()
                and self.configs.synced.is_set())

    def references(self) -> dict[str, set[str]]:
        peers: list[BGPPeer] = []
        configs: list[BGPConfiguration] = []
        for value in list(self.peers.items.values()):
            try:
                peers.append(BGPPeer.from_dict(dict(value)))
            except ResourceInvalid:
                self.bad_resources += 1  # the routing agent logs a peer it cannot use
        for value in list(self.configs.items.values()):
            try:
                configs.append(BGPConfiguration.from_dict(dict(value)))
            except ResourceInvalid:
                self.bad_resources += 1
        self.referrers = bgp_secrets.referrers(peers, configs)
        return bgp_secrets.referenced(peers, configs)

    async def reconcile(self, key: str) -> None:
        if not self._ready():
            return  # the synced callbacks queue a full pass
        await self._sync(key, self.references())

    async def _sync(self, name: str, refs: dict[str, set[str]]) -> None:
        dkey = bgp_secrets.secret_key(name)
        wanted = refs.get(name)
        obj = self.reflector.get(f"{self.namespace}/{name}")
        if not wanted:
            await self._note_missing(name, set())
            await delete_if_present(self.ctx.store, dkey, self.ctx.metrics, self.name)
            return
        if obj is None:
            await self._note_missing(name, set(wanted), secret_exists=False)
            await delete_if_present(self.ctx.store, dkey, self.ctx.metrics, self.name)
            return
        data, lacking = decoded(obj, wanted)
        await self._note_missing(name, lacking)
        if not data:
            await delete_if_present(self.ctx.store, dkey, self.ctx.metrics, self.name)
            return
        if await put_if_changed(self.ctx.store, dkey,
                                bgp_secrets.document(self.namespace, data, wanted),
                                self.ctx.metrics, self.name):
            # never the values: which keys, of which Secret
            log.info("BGP password copied", extra={"fields": {
                "secret": f"{self.namespace}/{name}", "keys": ",".join(sorted(data))}})

    async def _note_missing(self, name: str, lacking: set[str],
                            secret_exists: bool = True) -> None:
        if lacking:
            self.missing[name] = set(lacking)
        else:
            self.missing.pop(name, None)
        self.ctx.metrics.bgp_password_refs_missing.set(
            sum(len(v) for v in self.missing.values()))
        if not lacking:
            self.reported.pop(name, None)  # resolved: a new loss is reported again
            return
        reason, message = self.missing_event(name, lacking, secret_exists)
        if self.reported.get(name) == (reason, message):
            return
        self.reported[name] = (reason, message)
        log.warning("a BGP password's Secret or key does not exist; peerings using it "
                    "stay down", extra={"fields": {
                        "secret": f"{self.namespace}/{name}",
                        "keys": ",".join(sorted(lacking)),
                        "referenced_by": ",".join(sorted({
                            r for k in lacking for r in self.referrers.get((name, k), [])})),
                        "problem": "key not in secret" if secret_exists
                        else "secret not found"}})
        if self.events is not None:
            await self.events.record(
                {"apiVersion": "v1", "kind": "Secret", "namespace": self.namespace,
                 "name": name}, WARNING, reason, message)

    def missing_event(self, name: str, lacking: set[str], secret_exists: bool
                      ) -> tuple[str, str]:
        """The reason and message of the Event about Secret ``name`` lacking ``lacking``."""
        refs = "; ".join(
            f"key {k} by {', '.join(self.referrers.get((name, k)) or ['?'])}"
            for k in sorted(lacking))
        where = f"Secret {self.namespace}/{name}"
        if not secret_exists:
            return (REASON_SECRET_MISSING,
                    f"{where} not found; referenced as a BGP password: {refs}. The peerings "
                    "using it stay down until it exists.")
        return (REASON_KEY_MISSING,
                f"{where} has no usable key (absent, or not base64 of UTF-8 text) referenced "
                f"as a BGP password: {refs}. The peerings using it stay down until it has.")

    async def full(self) -> None:
        if not self._ready():
            return
        refs = self.references()
        stored, _ = await self.ctx.store.list(BGP_SECRETS)
        names = set(refs)
        for kv in stored:
            try:
                names.add(bgp_secrets.secret_name(kv.key))
            except ValueError:
                continue
        for name in list(self.missing):
            if name not in refs:
                names.add(name)
        for name in sorted(names):
            await self._sync(name, refs)

    def health(self) -> dict[str, Any]:
        h = super().health()
        h["missing"] = {f"{self.namespace}/{n}": sorted(k) for n, k in self.missing.items()}
        if self.events is not None:
            h["events"] = {"posted": self.events.posted, "lastError": self.events.last_error}
        return h
