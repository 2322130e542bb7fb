"""Kubernetes Events of tortie-kube-controllers (kubecontrollers/events.py) against the
in-process API server of tests/support/fake_kube_api.py, and the Events about a missing BGP
password Secret (kubecontrollers/bgpsecrets.py): what they say, and that a state reported
once is not reported again."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio import client

from agentkit.metrics import value
from datastore import bgp_secrets
from datastore.memory import MemoryStore
from datastore.resources import to_resource
from kubecontrollers.bgpsecrets import (
    REASON_KEY_MISSING,
    REASON_SECRET_MISSING,
    BGPSecretController,
)
from kubecontrollers.controller import Context
from kubecontrollers.datastore_cache import DatastoreCache
from kubecontrollers.events import WARNING, EventRecorder
from kubecontrollers.metrics import KubeMetrics
from kubecontrollers.reflector import Reflector
from tests.support.fake_kube_api import FakeKubeAPI

SECRET = {"apiVersion": "v1", "kind": "Secret", "namespace": "kube-system", "name": "bgp-pw"}


def peer(name: str, secret: str, key: str) -> Any:
    return to_resource({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                        "metadata": {"name": name},
                        "spec": {"peerIP": "192.0.2.1", "asNumber": 65001,
                                 "password": {"secretKeyRef": {"name": secret,
                                                               "key": key}}}})[1]


@contextlib.asynccontextmanager
async def recorder() -> AsyncIterator[tuple[FakeKubeAPI, EventRecorder]]:
    async with FakeKubeAPI() as api:
        api_client = client.ApiClient(client.Configuration(host=api.url))
        try:
            yield api, EventRecorder(api_client, host="kc-host", metrics=KubeMetrics())
        finally:
            await api_client.close()


def events(api: FakeKubeAPI) -> list[dict[str, Any]]:
    return [api.get("events", name, ns) for ns, name in sorted(api.objects["events"])]


def test_referrers_name_the_resources_per_secret_and_key() -> None:
    configs = [to_resource({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                            "metadata": {"name": "default"}, "spec": {
                                "nodeMeshPassword": {"secretKeyRef": {"name": "s",
                                                                      "key": "k"}}}})[1]]
    assert bgp_secrets.referrers([peer("b", "s", "k"), peer("a", "s", "k"),
                                  peer("c", "s", "other")], configs) == {
        ("s", "k"): ["BGPConfiguration default", "BGPPeer a", "BGPPeer b"],
        ("s", "other"): ["BGPPeer c"]}


async def test_an_event_is_created_then_counted_up_not_repeated() -> None:
    async with recorder() as (api, rec):
        assert await rec.record(SECRET, WARNING, "Why", "what happened")
        [ev] = events(api)
        assert ev["metadata"]["namespace"] == "kube-system"
        assert ev["metadata"]["name"].startswith("bgp-pw.")
        assert ev["involvedObject"] == SECRET
        assert (ev["type"], ev["reason"], ev["message"], ev["count"]) == (
            "Warning", "Why", "what happened", 1)
        assert ev["source"] == {"component": "tortie-kube-controllers", "host": "kc-host"}
        assert ev["firstTimestamp"] == ev["lastTimestamp"]
        # the same event again: the same Event, count 2
        assert await rec.record(SECRET, WARNING, "Why", "what happened")
        [ev] = events(api)
        assert ev["count"] == 2
        # another message: another Event
        assert await rec.record(SECRET, WARNING, "Why", "something else")
        assert sorted(e["count"] for e in events(api)) == [1, 2]
        # an Event the server no longer has (expired): made again
        api.delete("events", ev["metadata"]["name"], "kube-system")
        assert await rec.record(SECRET, WARNING, "Why", "what happened")
        assert sorted((e["message"], e["count"]) for e in events(api)) == [
            ("something else", 1), ("what happened", 1)]


async def test_a_refused_event_is_logged_and_counted_never_raised() -> None:
    async with recorder() as (api, rec):
        api.fail_requests = 1
        assert not await rec.record(SECRET, WARNING, "Why", "what happened")
        assert value(rec.metrics.events_failed) == 1 and "500" in rec.last_error
        assert events(api) == []
        assert await rec.record(SECRET, WARNING, "Why", "what happened")
        assert len(events(api)) == 1


async def test_missing_secret_and_key_events_once_per_state() -> None:
    store = MemoryStore()
    async with recorder() as (api, rec):
        ctx = Context(store, rec.metrics, {})
        refl = Reflector("secrets", lambda **kw: None, kind="Secret", api_version="v1")
        ctl = BGPSecretController(ctx, refl, DatastoreCache(store, "bgppeers"),
                                  DatastoreCache(store, "bgpconfigurations"), "kube-system",
                                  events=rec)
        ctl.referrers = bgp_secrets.referrers(
            [peer("tor", "bgp-pw", "tor"), peer("tor2", "bgp-pw", "tor")], [])
        for _ in range(3):  # every pass sees the same: one Event, count 1
            await ctl._note_missing("bgp-pw", {"tor"}, secret_exists=False)
        [ev] = events(api)
        assert ev["reason"] == REASON_SECRET_MISSING and ev["count"] == 1
        assert ev["involvedObject"] == SECRET
        assert ev["message"] == (
            "Secret kube-system/bgp-pw not found; referenced as a BGP password: key tor by "
            "BGPPeer tor, BGPPeer tor2. The peerings using it stay down until it exists.")
        assert value(rec.metrics.bgp_password_refs_missing) == 1
        # the Secret appears without the key: a new state, a new Event
        await ctl._note_missing("bgp-pw", {"tor"})
        await ctl._note_missing("bgp-pw", {"tor"})
        key_events = [e for e in events(api) if e["reason"] == REASON_KEY_MISSING]
        assert len(key_events) == 1 and "has no usable key" in key_events[0]["message"]
        assert "key tor by BGPPeer tor, BGPPeer tor2" in key_events[0]["message"]
        # resolved, then lost again: the same Event counted up (as kube's recorder)
        await ctl._note_missing("bgp-pw", set())
        assert value(rec.metrics.bgp_password_refs_missing) == 0
        await ctl._note_missing("bgp-pw", {"tor"})
        assert sorted((e["reason"], e["count"]) for e in events(api)) == [
            (REASON_KEY_MISSING, 2), (REASON_SECRET_MISSING, 1)]
        assert ctl.health()["events"]["posted"] == 3  # two made, one counted up
