"""BGP passwords from Secrets: which keys are referenced (datastore/bgp_secrets.py), how
tortie-kube-controllers decodes a Secret (kubecontrollers/bgpsecrets.py), and a stored copy
all the way to ExaBGP's configuration."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from datastore import bgp_secrets
from datastore.keys import BGP_SECRETS, ROOT
from datastore.resources import to_resource
from kubecontrollers.bgpsecrets import decoded
from routing.agent import tcp_md5_failures
from routing.bgp.exabgp_config import render_config
from routing.bgp.peers import compute_settings


def res(kind: str, name: str, spec: dict[str, Any]) -> Any:
    return to_resource({"apiVersion": "projectcalico.org/v3", "kind": kind,
                        "metadata": {"name": name}, "spec": spec})[1]


def ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


PEERS = [res("BGPPeer", "tor", {"peerIP": "192.0.2.1", "asNumber": 65001,
                                "password": ref("bgp-secrets", "tor")}),
         res("BGPPeer", "tor2", {"peerIP": "192.0.2.2", "asNumber": 65001,
                                 "password": ref("bgp-secrets", "tor2")}),
         res("BGPPeer", "plain", {"peerIP": "192.0.2.3", "asNumber": 65001})]
CONFIGS = [res("BGPConfiguration", "default", {"nodeMeshPassword": ref("mesh", "pw")}),
           res("BGPConfiguration", "node.n1", {"listenPort": 1790})]


def test_referenced_keys_of_peers_and_the_default_configuration() -> None:
    assert bgp_secrets.referenced(PEERS, CONFIGS) == {"bgp-secrets": {"tor", "tor2"},
                                                       "mesh": {"pw"}}
    assert bgp_secrets.referenced([PEERS[2]], []) == {}


def test_key_layout_is_outside_the_resource_root() -> None:
    key = bgp_secrets.secret_key("bgp-secrets")
    assert key == BGP_SECRETS + "bgp-secrets" and not key.startswith(ROOT)
    assert bgp_secrets.secret_name(key) == "bgp-secrets"
    for bad in (ROOT + "resources/bgppeers/x", BGP_SECRETS, BGP_SECRETS + "a/b"):
        with pytest.raises(ValueError):
            bgp_secrets.secret_name(bad)
    with pytest.raises(ValueError):
        bgp_secrets.secret_key("a/b")


def test_document_keeps_only_the_wanted_keys() -> None:
    doc = bgp_secrets.document("kube-system", {"tor": "s3cret", "other": "not-for-bgp"},
                               {"tor", "absent"})
    assert doc == {"namespace": "kube-system", "data": {"tor": "s3cret"}}
    assert bgp_secrets.parse_document(doc) == {"tor": "s3cret"}
    with pytest.raises(ValueError, match="data"):
        bgp_secrets.parse_document({"data": {"tor": 1}})
    with pytest.raises(ValueError, match="data"):
        bgp_secrets.parse_document({})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_decoded_reports_absent_and_undecodable_keys() -> None:
    secret = {"data": {"tor": _b64("s3cret"), "junk": "!!not base64", "other": _b64("x"),
                       "bin": base64.b64encode(b"\xff\xfe").decode()}}
    data, lacking = decoded(secret, {"tor", "junk", "bin", "absent"})
    assert data == {"tor": "s3cret"}
    assert lacking == {"junk", "bin", "absent"}
    assert decoded({}, {"tor"}) == ({}, {"tor"})


def test_stored_copy_becomes_exabgp_md5_password() -> None:
    """What the routing agent does with a stored copy: lookup -> neighbour -> config."""
    stored = {"bgp-secrets": bgp_secrets.parse_document(
        bgp_secrets.document("kube-system", {"tor": "s3cret"}, {"tor", "tor2"}))}
    nodes = [res("Node", "n1", {"bgp": {"ipv4Address": "192.0.2.11/24"}})]
    r = compute_settings("n1", nodes, [], PEERS,
                         secrets=lambda name, key: stored.get(name, {}).get(key))
    assert r.settings is not None
    text = render_config(r.settings, ["/bin/cat"])
    tor = text.split("neighbor 192.0.2.1 ")[1].split("\n}")[0]
    assert 'md5-password "s3cret";' in tor
    assert "neighbor 192.0.2.2 " not in text  # tor2's key is missing: held back
    plain = text.split("neighbor 192.0.2.3 ")[1].split("\n}")[0]
    assert "md5-password" not in plain
    assert [(m.peer, m.key) for m in r.missing_passwords] == [("BGPPeer tor2", "tor2")]


def test_tcp_md5_failures_from_netstat() -> None:
    text = ("TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure\n"
            "TcpExt: 0 2 3 4\n"
            "IpExt: InNoRoutes TCPMD5Failure\n"
            "IpExt: 0 100\n")
    assert tcp_md5_failures(text) == 9
    assert tcp_md5_failures("TcpExt: SyncookiesSent\nTcpExt: 5\n") == 0
    assert tcp_md5_failures("") == 0
