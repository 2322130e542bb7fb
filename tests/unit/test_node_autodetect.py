"""The node address settings (node/autodetect.py): parsing IP and IP_AUTODETECTION_METHOD,
and which address each method picks from a list of interfaces."""

from __future__ import annotations

import pytest

from node.autodetect import (
    AutodetectError,
    HostAddress,
    IPSetting,
    Own,
    choose,
    explicit,
    parse_ip,
    parse_method,
)
from node.autodetect import internal_ips as node_internal_ips
from node.main import parse_args

OWN = Own("cali", ("vxlan.tortie", "tunl0"))

#: a host: loopback, a management NIC, a data NIC with the default route, a docker bridge,
#: Tortie's VXLAN device and a pod veth
HOST = [
    HostAddress("lo", 1, "127.0.0.1/8", scope=254),
    HostAddress("mgmt0", 2, "172.16.0.5/24"),
    HostAddress("data0", 3, "10.20.0.7/16", default_route=True),
    HostAddress("data0", 3, "169.254.3.3/16"),
    HostAddress("docker0", 4, "172.17.0.1/16"),
    HostAddress("vxlan.tortie", 5, "10.244.1.0/32"),
    HostAddress("cali1234", 6, "10.30.0.9/32"),
    HostAddress("data1", 7, "192.168.50.2/24"),
]


def pick(method: str, addresses: list[HostAddress] = HOST, *, source: str | None = None,
         internal_ips: list[str] | None = None) -> str | None:
    choice = choose(parse_method(method), addresses, own=OWN, source=source,
                    internal_ips=internal_ips or [])
    return None if choice is None else f"{choice.interface} {choice.address}"


# --- parsing -----------------------------------------------------------------------------------


def test_default_method_is_first_found() -> None:
    assert parse_method(None).kind == "first-found"
    assert parse_method("").kind == "first-found"
    assert parse_method(" first-found ").kind == "first-found"


@pytest.mark.parametrize(("text", "kind"), [
    ("interface=eth0", "interface"),
    ("interface=eth.*,ens.*", "interface"),
    ("skip-interface=enp6s0f0,eth.*", "skip-interface"),
    ("can-reach=8.8.8.8", "can-reach"),
    ("can-reach=www.example.com", "can-reach"),
    ("cidr=10.0.1.0/24,10.0.2.0/24", "cidr"),
    ("kubernetes-internal-ip", "kubernetes-internal-ip"),
])
def test_methods_parse(text: str, kind: str) -> None:
    m = parse_method(text)
    assert m.kind == kind and m.text == text


def test_method_values_are_split_and_compiled() -> None:
    assert [p.pattern for p in parse_method("interface=eth.*, ens.*").patterns] == \
        ["eth.*", "ens.*"]
    assert [str(n) for n in parse_method("cidr=10.0.1.5/24,192.168.0.0/16").networks] == \
        ["10.0.1.0/24", "192.168.0.0/16"]
    assert parse_method("can-reach=192.0.2.1").destination == "192.0.2.1"


@pytest.mark.parametrize(("text", "words"), [
    ("bogus", "unknown method"),
    ("interface", "needs a value"),
    ("interface=", "needs a value"),
    ("interface=eth(", "not a valid regular expression"),
    ("interface=eth0,,eth1", "empty entries"),
    ("cidr=10.0.0.0/33", "not an IPv4 CIDR"),
    ("cidr=fd00::/64", "not an IPv4 CIDR"),
    ("can-reach=", "needs a value"),
    ("can-reach=a b", "not an IP address or a host name"),
    ("first-found=eth0", "takes no value"),
    ("kubernetes-internal-ip=x", "takes no value"),
])
def test_bad_methods_name_the_setting(text: str, words: str) -> None:
    with pytest.raises(AutodetectError) as e:
        parse_method(text)
    assert "IP_AUTODETECTION_METHOD" in str(e.value) and words in str(e.value)


def test_ip_settings() -> None:
    assert parse_ip(None) == IPSetting("autodetect")
    assert parse_ip("autodetect") == IPSetting("autodetect")
    assert parse_ip("None") == IPSetting("none")
    assert parse_ip("10.0.0.5/24") == IPSetting("explicit", "10.0.0.5/24")
    assert parse_ip("10.0.0.5") == IPSetting("explicit", "10.0.0.5")


@pytest.mark.parametrize("text", ["10.0.0", "10.0.0.5/33", "fd00::1/64", "127.0.0.1/8",
                                  "169.254.1.1/16", "0.0.0.0/0", "auto"])
def test_bad_ip_names_the_setting(text: str) -> None:
    with pytest.raises(AutodetectError) as e:
        parse_ip(text)
    assert "--ip (IP)" in str(e.value)


def test_daemon_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IP", "none")
    monkeypatch.setenv("IP_AUTODETECTION_METHOD", "interface=eth1")
    args = parse_args(["--node-name", "n"])
    assert args.ip_setting == IPSetting("none")
    assert args.ip_method.kind == "interface"
    args = parse_args(["--node-name", "n", "--ip", "10.1.2.3/24",
                       "--ip-autodetection-method", "cidr=10.1.0.0/16"])
    assert args.ip_setting == IPSetting("explicit", "10.1.2.3/24")
    assert args.ip_method.kind == "cidr"


def test_daemon_refuses_a_bad_method_at_startup(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("IP", raising=False)
    with pytest.raises(SystemExit) as e:
        parse_args(["--node-name", "n", "--ip-autodetection-method", "interfaces=eth0"])
    assert e.value.code == 2
    assert "IP_AUTODETECTION_METHOD" in capsys.readouterr().err


def test_metrics_address_flags() -> None:
    a = parse_args(["--node-name", "n"])
    assert (a.metrics_host, a.metrics_port) == ("127.0.0.1", 9099)
    a = parse_args(["--node-name", "n", "--metrics-address", "0.0.0.0:9091"])
    assert (a.metrics_host, a.metrics_port) == ("0.0.0.0", 9091)
    a = parse_args(["--node-name", "n", "--metrics-address", "[::1]:0"])
    assert (a.metrics_host, a.metrics_port) == ("::1", 0)
    a = parse_args(["--node-name", "n", "--metrics-port", "0"])
    assert (a.metrics_host, a.metrics_port) == ("127.0.0.1", 0)
    for bad in (["--metrics-address", "9091"], ["--metrics-address", "h:99999"],
                ["--metrics-address", "h:1", "--metrics-port", "2"]):
        with pytest.raises(SystemExit):
            parse_args(["--node-name", "n", *bad])


# --- choosing ----------------------------------------------------------------------------------


def test_first_found_prefers_the_default_route_and_skips_excluded_interfaces() -> None:
    assert pick("first-found") == "data0 10.20.0.7/16"
    no_default = [a for a in HOST if a.interface != "data0"]
    # mgmt0 by index; docker0, lo, vxlan.tortie and cali* never
    assert pick("first-found", no_default) == "mgmt0 172.16.0.5/24"
    only_excluded = [a for a in HOST if a.interface in ("lo", "docker0", "vxlan.tortie",
                                                         "cali1234")]
    assert pick("first-found", only_excluded) is None


def test_interface_regex() -> None:
    assert pick("interface=data1") == "data1 192.168.50.2/24"
    assert pick("interface=mgmt.*,data1") == "mgmt0 172.16.0.5/24"
    assert pick("interface=^data") == "data0 10.20.0.7/16"
    assert pick("interface=nothere") is None
    # the method names Tortie's own device: the user asked for it
    assert pick("interface=vxlan.tortie") == "vxlan.tortie 10.244.1.0/32"
    # never a link-local or loopback address, even on a named interface
    assert pick("interface=lo") is None


def test_skip_interface_regex() -> None:
    assert pick("skip-interface=data0") == "mgmt0 172.16.0.5/24"
    assert pick("skip-interface=data.*,mgmt0") == "docker0 172.17.0.1/16"
    # Tortie's devices stay out although no expression names them
    assert pick("skip-interface=data.*,mgmt0,docker0") is None


def test_cidr() -> None:
    assert pick("cidr=192.168.0.0/16") == "data1 192.168.50.2/24"
    assert pick("cidr=10.99.0.0/16,172.16.0.0/12") == "mgmt0 172.16.0.5/24"
    assert pick("cidr=10.244.0.0/16") is None  # only the VXLAN device's address is in it
    assert pick("cidr=203.0.113.0/24") is None


def test_can_reach_takes_the_interface_of_the_source_address() -> None:
    assert pick("can-reach=192.168.50.99", source="192.168.50.2") == "data1 192.168.50.2/24"
    assert pick("can-reach=10.20.9.9", source="10.20.0.7") == "data0 10.20.0.7/16"
    assert pick("can-reach=10.20.9.9", source="198.51.100.1") is None


def test_kubernetes_internal_ip() -> None:
    assert pick("kubernetes-internal-ip", internal_ips=["172.16.0.5"]) == \
        "mgmt0 172.16.0.5/24"
    assert pick("kubernetes-internal-ip", internal_ips=["fd00::5", "192.168.50.2"]) == \
        "data1 192.168.50.2/24"
    assert pick("kubernetes-internal-ip", internal_ips=[]) is None
    assert pick("kubernetes-internal-ip", internal_ips=["198.51.100.1"]) is None


def test_internal_ips_from_the_node_document() -> None:
    doc = {"spec": {"addresses": [{"address": "10.0.0.5", "type": "InternalIP"},
                                  {"address": "203.0.113.5", "type": "ExternalIP"},
                                  {"address": "10.0.0.6/24", "type": "InternalIP"},
                                  {"address": "10.0.0.7", "type": "CalicoNodeIP"}]}}
    assert node_internal_ips(doc) == ["10.0.0.5", "10.0.0.6"]
    assert node_internal_ips(None) == [] and node_internal_ips({"spec": {}}) == []


def test_explicit_address_takes_the_prefix_of_its_interface() -> None:
    assert explicit(IPSetting("explicit", "172.16.0.5"), HOST).address == "172.16.0.5/24"
    assert explicit(IPSetting("explicit", "172.16.0.5"), HOST).interface == "mgmt0"
    assert explicit(IPSetting("explicit", "172.16.0.5/20"), HOST).address == "172.16.0.5/20"
    lone = explicit(IPSetting("explicit", "198.51.100.7"), HOST)
    assert (lone.address, lone.interface) == ("198.51.100.7/32", "")


# --- IPv6 (IP6 / IP6_AUTODETECTION_METHOD) -------------------------------------------------------

HOST6 = [
    HostAddress("lo", 1, "::1/128", scope=254),
    HostAddress("mgmt0", 2, "fe80::5/64", scope=253),
    HostAddress("mgmt0", 2, "2001:db8:1::5/64"),
    HostAddress("data0", 3, "2001:db8:2::7/64", default_route=True),
    HostAddress("docker0", 4, "fd00:17::1/64"),
    HostAddress("cali1234", 6, "fd00:30::9/128"),
]


def pick6(method: str, source: str | None = None) -> str | None:
    choice = choose(parse_method(method, version=6), HOST6, own=OWN, source=source)
    return None if choice is None else f"{choice.interface} {choice.address}"


def test_ip6_defaults_to_none_and_parses_v6_only() -> None:
    assert parse_ip(None, version=6) == IPSetting("none")
    assert parse_ip("autodetect", version=6) == IPSetting("autodetect")
    assert parse_ip("2001:db8::5/64", version=6) == IPSetting("explicit", "2001:db8::5/64")
    with pytest.raises(AutodetectError, match=r"--ip6 \(IP6\)"):
        parse_ip("10.0.0.5/24", version=6)
    with pytest.raises(AutodetectError, match=r"--ip \(IP\)"):
        parse_ip("2001:db8::5/64")
    with pytest.raises(AutodetectError, match="usable"):
        parse_ip("fe80::1/64", version=6)


def test_ip6_methods_pick_ipv6_addresses() -> None:
    assert pick6("first-found") == "data0 2001:db8:2::7/64"
    assert pick6("interface=mgmt.*") == "mgmt0 2001:db8:1::5/64"
    assert pick6("skip-interface=data.*") == "mgmt0 2001:db8:1::5/64"
    assert pick6("cidr=fd00:17::/48") == "docker0 fd00:17::1/64"  # not first-found's
    assert pick6("cidr=2001:db8:1::/48") == "mgmt0 2001:db8:1::5/64"
    assert pick6("can-reach=2001:db8:2::1", source="2001:db8:2::7") == "data0 2001:db8:2::7/64"
    with pytest.raises(AutodetectError, match=r"IP6_AUTODETECTION_METHOD.*not an IPv6 CIDR"):
        parse_method("cidr=10.0.0.0/8", version=6)


def test_node_flags_ip6() -> None:
    args = parse_args(["--node-name", "n1", "--ip6", "autodetect",
                       "--ip6-autodetection-method", "interface=eth0"])
    assert args.ip6_setting == IPSetting("autodetect")
    assert args.ip6_method.kind == "interface" and args.ip6_method.version == 6
    assert parse_args(["--node-name", "n1"]).ip6_setting == IPSetting("none")
