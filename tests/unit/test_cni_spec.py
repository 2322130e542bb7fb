"""cni.spec: environment and configuration validation, CNI_ARGS, results per version."""

from __future__ import annotations

import io
import json
import random
import sys
from typing import Any

import pytest

from cni import plugin, spec
from cni.handler import workload_endpoint_name
from cni.netlink import host_veth_name
from cni.spec import (
    CNIError,
    Interface,
    IPConfig,
    Result,
    Route,
    parse_cni_args,
    parse_config,
    parse_env,
    parse_result,
    parse_valid_attachments,
)

GOOD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "0123abcd_x.y-z",
    "CNI_NETNS": "/var/run/netns/pod1",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u1;"
                "K8S_POD_INFRA_CONTAINER_ID=0123abcd",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
}
GOOD_CONF: dict[str, Any] = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tortie",
                             "ipam": {"type": "tortie-ipam"}}


def code_of(fn: Any, *args: Any, **kw: Any) -> int:
    with pytest.raises(CNIError) as e:
        fn(*args, **kw)
    return e.value.code


# --- environment ---------------------------------------------------------------------------------


def test_parse_env() -> None:
    env = parse_env(GOOD_ENV)
    assert env.command == "ADD"
    assert env.container_id == "0123abcd_x.y-z"
    assert env.netns == "/var/run/netns/pod1"
    assert env.ifname == "eth0"
    assert env.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert (env.pod_namespace, env.pod_name, env.pod_uid) == ("shop", "web-0", "u1")
    assert env.is_k8s
    assert parse_env(env.as_dict()) == env


@pytest.mark.parametrize("command", spec.COMMANDS)
def test_required_variables_per_command(command: str) -> None:
    if command in ("GC", "STATUS", "VERSION"):  # need nothing but the command
        assert parse_env({"CNI_COMMAND": command}).command == command
        return
    assert code_of(parse_env, {"CNI_COMMAND": command}) == 4
    # DEL without CNI_NETNS is fine (the namespace may be gone already)
    partial = {"CNI_COMMAND": command, "CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0"}
    if command == "DEL":
        assert parse_env(partial).netns == ""
    else:
        with pytest.raises(CNIError) as e:
            parse_env(partial)
        assert e.value.code == 4 and "CNI_NETNS" in e.value.msg


@pytest.mark.parametrize("var,value,names", [
    ("CNI_COMMAND", "", "CNI_COMMAND"),
    ("CNI_COMMAND", "add", "CNI_COMMAND"),
    ("CNI_CONTAINERID", "", "CNI_CONTAINERID"),
    ("CNI_CONTAINERID", "-leading-dash", "CNI_CONTAINERID"),
    ("CNI_CONTAINERID", ".dot", "CNI_CONTAINERID"),
    ("CNI_CONTAINERID", "has space", "CNI_CONTAINERID"),
    ("CNI_CONTAINERID", "a/b", "CNI_CONTAINERID"),
    ("CNI_NETNS", "", "CNI_NETNS"),
    ("CNI_NETNS", "relative/path", "CNI_NETNS"),
    ("CNI_IFNAME", "", "CNI_IFNAME"),
    ("CNI_IFNAME", "x" * 16, "CNI_IFNAME"),
    ("CNI_IFNAME", ".", "CNI_IFNAME"),
    ("CNI_IFNAME", "..", "CNI_IFNAME"),
    ("CNI_IFNAME", "a/b", "CNI_IFNAME"),
    ("CNI_IFNAME", "a:b", "CNI_IFNAME"),
    ("CNI_IFNAME", "a b", "CNI_IFNAME"),
    ("CNI_ARGS", "novalue", "CNI_ARGS"),
    ("CNI_ARGS", "A=1=2", "CNI_ARGS"),
    ("CNI_ARGS", "UNKNOWN=1", "CNI_ARGS"),
    ("CNI_ARGS", "IgnoreUnknown=maybe", "CNI_ARGS"),
    ("CNI_CONTAINERID", "abc\n", "CNI_CONTAINERID"),
    ("CNI_CONTAINERID", "a" * 256, "CNI_CONTAINERID"),
    ("CNI_IFNAME", "eth\x010", "CNI_IFNAME"),
    ("CNI_IFNAME", "\u00e9" * 8, "CNI_IFNAME"),  # 8 characters, 16 bytes
    ("CNI_IFNAME", "eth\udcff", "CNI_IFNAME"),  # not UTF-8
    # kubelet's names: checked here, before anything is allocated
    ("CNI_ARGS", "K8S_POD_NAMESPACE=../../x;K8S_POD_NAME=web", "K8S_POD_NAMESPACE"),
    ("CNI_ARGS", "K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web", "K8S_POD_NAMESPACE"),
    ("CNI_ARGS", "K8S_POD_NAMESPACE=" + "a" * 64 + ";K8S_POD_NAME=web", "K8S_POD_NAMESPACE"),
    ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=../web", "K8S_POD_NAME"),
    ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=Web_0", "K8S_POD_NAME"),
    ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=" + "a" * 254, "K8S_POD_NAME"),
    ("CNI_ARGS", "K8S_POD_INFRA_CONTAINER_ID=../x", "K8S_POD_INFRA_CONTAINER_ID"),
    ("CNI_ARGS", "IP=10.0.0.300", "IP"),
    ("CNI_ARGS", "IP=10.0.0.1,10.0.0.2", "IP"),
])
def test_invalid_env_is_code_4_naming_the_variable(var: str, value: str, names: str) -> None:
    env = dict(GOOD_ENV)
    env[var] = value
    with pytest.raises(CNIError) as e:
        parse_env(env)
    assert e.value.code == 4
    assert names in e.value.msg
    assert e.value.to_dict("1.0.0")["code"] == 4


def test_valid_names() -> None:
    assert spec.validate_ifname("x" * 15) is None
    assert spec.validate_ifname("eth0.100") is None
    assert spec.validate_container_id("A1_b.c-d") is None
    assert spec.validate_container_id("0" * 64) is None
    args = parse_cni_args("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-x.y;"
                          "K8S_POD_INFRA_CONTAINER_ID=" + "f" * 64 + ";IP=10.0.0.1,fd00::1")
    assert args["K8S_POD_NAME"] == "coredns-5d78c9869d-x.y"


def test_cni_args() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args("K8S_POD_NAME=web;K8S_POD_NAMESPACE=ns") == {
        "K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "ns"}
    assert parse_cni_args("IgnoreUnknown=1;FOO=bar;;K8S_POD_NAME=") == {
        "IgnoreUnknown": "1", "FOO": "bar", "K8S_POD_NAME": ""}
    assert parse_cni_args("IgnoreUnknown=true;FOO=bar")["FOO"] == "bar"
    assert code_of(parse_cni_args, "IgnoreUnknown=0;FOO=bar") == 4
    assert code_of(parse_cni_args, "IgnoreUnknown=false;FOO=bar") == 4
    assert code_of(parse_cni_args, "=x") == 4
    assert code_of(parse_cni_args, "IP=10.0.0.1;K8S_POD_NAME") == 4
    assert parse_cni_args("IP=10.0.0.1")["IP"] == "10.0.0.1"


def test_no_pod_identity() -> None:
    env = parse_env({**GOOD_ENV, "CNI_ARGS": "K8S_POD_NAME=web"})
    assert not env.is_k8s and env.pod_namespace is None


# --- configuration -------------------------------------------------------------------------------


def test_parse_config() -> None:
    conf = parse_config({**GOOD_CONF, "mtu": 1400, "timeout": 5, "nodename": "n1",
                         "ipam": {"type": "calico-ipam", "ipv4_pools": ["a", "10.0.0.0/16"],
                                  "assign_ipv6": "true"},
                         "dns": {"nameservers": ["10.96.0.10"]},
                         "runtimeConfig": {"portMappings": []}})
    assert (conf.cni_version, conf.name, conf.type) == ("1.0.0", "k8s-pod-network", "tortie")
    assert conf.mtu == 1400 and conf.timeout == 5.0 and conf.nodename == "n1"
    assert conf.ipv4_pools == ("a", "10.0.0.0/16")
    assert conf.assign_ipv4 and conf.assign_ipv6
    assert conf.dns == {"nameservers": ["10.96.0.10"]}
    assert conf.prev_result is None
    # unknown fields are ignored, as in every CNI plugin
    assert parse_config({**GOOD_CONF, "log_level": "debug", "whatever": 1}).name == \
        "k8s-pod-network"


@pytest.mark.parametrize("mutate,code", [
    (lambda c: {**c, "cniVersion": "0.2.0"}, 1),
    (lambda c: {**c, "cniVersion": "2.0.0"}, 1),
    (lambda c: {**c, "cniVersion": "1.0"}, 1),
    (lambda c: {**c, "cniVersion": 1}, 7),
    (lambda c: {k: v for k, v in c.items() if k != "cniVersion"}, 7),
    (lambda c: {k: v for k, v in c.items() if k != "name"}, 7),
    (lambda c: {**c, "name": ""}, 7),
    (lambda c: {**c, "name": "has space"}, 7),
    (lambda c: {**c, "name": "_lead"}, 7),
    (lambda c: {**c, "name": "n" * 256}, 7),
    (lambda c: {**c, "name": "net\n"}, 7),
    (lambda c: {k: v for k, v in c.items() if k != "type"}, 7),
    (lambda c: {**c, "type": 5}, 7),
    (lambda c: {**c, "ipam": {"type": "host-local"}}, 2),
    (lambda c: {**c, "ipam": {"type": 3}}, 7),
    (lambda c: {**c, "ipam": []}, 7),
    (lambda c: {**c, "mtu": "1500"}, 7),
    (lambda c: {**c, "mtu": True}, 7),
    (lambda c: {**c, "mtu": 67}, 7),
    (lambda c: {**c, "mtu": 70000}, 7),
    (lambda c: {**c, "timeout": 0}, 7),
    (lambda c: {**c, "timeout": "5"}, 7),
    (lambda c: {**c, "socket": "relative.sock"}, 7),
    (lambda c: {**c, "nodename": ""}, 7),
    (lambda c: {**c, "ipam": {"ipv4_pools": "a"}}, 7),
    (lambda c: {**c, "ipam": {"ipv4_pools": [""]}}, 7),
    (lambda c: {**c, "ipam": {"assign_ipv4": "yes"}}, 7),
    (lambda c: {**c, "prevResult": []}, 7),
    (lambda c: {**c, "prevResult": {"ips": [{"address": "10.0.0.1"}]}}, 7),
    (lambda c: {**c, "runtimeConfig": []}, 7),
    (lambda c: {**c, "dns": "x"}, 7),
    (lambda c: [c], 7),
    (lambda c: None, 7),
])
def test_invalid_config(mutate: Any, code: int) -> None:
    assert code_of(parse_config, mutate(dict(GOOD_CONF))) == code


@pytest.mark.parametrize("field,value", [
    ("args", "x"), ("args", {"cni": []}), ("capabilities", ["portMappings"]),
    ("capabilities", {"portMappings": "yes"}), ("policy", "k8s"), ("policy", {"type": 1}),
    ("kubernetes", "/etc/kubeconfig"), ("kubernetes", {"kubeconfig": 5}),
    ("timeout", float("inf")), ("timeout", float("nan")), ("timeout", 1e300),
    ("timeout", spec.MAX_TIMEOUT + 1),
])
def test_wrong_typed_fields_are_code_7_naming_them(field: str, value: Any) -> None:
    with pytest.raises(CNIError) as e:
        parse_config({**GOOD_CONF, field: value})
    assert e.value.code == 7 and field in e.value.msg


def test_conventional_fields_of_the_right_type() -> None:
    conf = parse_config({**GOOD_CONF, "args": {"cni": {"ips": ["10.0.0.1"]}},
                         "capabilities": {"portMappings": True, "bandwidth": False},
                         "policy": {"type": "k8s"},
                         "kubernetes": {"kubeconfig": "/etc/cni/net.d/tortie-kubeconfig"},
                         "timeout": spec.MAX_TIMEOUT})
    assert conf.timeout == spec.MAX_TIMEOUT
    for absent in ("args", "capabilities", "policy", "kubernetes"):
        assert parse_config({**GOOD_CONF, absent: None}).name == "k8s-pod-network"


def test_errors_quote_input_capped() -> None:
    """A 1 MB cniVersion (or any huge input) is not copied whole into errors and logs."""
    huge = "1" * 1_000_000
    for fn, arg in ((parse_config, {**GOOD_CONF, "cniVersion": huge}),
                    (parse_config, {**GOOD_CONF, "name": huge}),
                    (parse_config, {**GOOD_CONF, "ipam": {"type": huge}}),
                    (parse_env, {**GOOD_ENV, "CNI_CONTAINERID": "-" + huge}),
                    (parse_env, {**GOOD_ENV, "CNI_ARGS": f"K8S_POD_NAME={huge}x_"}),
                    (parse_env, {**GOOD_ENV, "CNI_ARGS": f"{huge}=1"}),
                    (parse_result, {"ips": [{"address": huge}]})):
        with pytest.raises(CNIError) as e:
            fn(arg)
        assert len(str(e.value)) < 1000, (fn, len(str(e.value)))
        assert len(json.dumps(e.value.to_dict())) < 1000
    assert len(str(CNIError(7, huge, huge))) < spec.MAX_MSG + spec.MAX_DETAILS + 100
    assert len(spec.quote(huge)) < spec.MAX_QUOTE + 40
    assert spec.quote("eth0") == "'eth0'"
    nested: Any = []
    for _ in range(5000):
        nested = [nested]
    assert len(spec.quote(nested)) < spec.MAX_QUOTE + 40  # no RecursionError either


def test_ipam_plugin_config() -> None:
    # the standalone IPAM plugin reads the config of whatever main plugin delegates to it
    conf = parse_config({"cniVersion": "1.0.0", "name": "br", "type": "bridge",
                         "ipam": {"type": "tortie-ipam", "ipv4_pools": ["p"]}},
                        ipam_plugin=True)
    assert conf.ipv4_pools == ("p",)
    assert parse_config({**GOOD_CONF, "ipam": {"type": "anything"}}, ipam_plugin=True)


def test_valid_attachments() -> None:
    conf = parse_config({**GOOD_CONF, "cniVersion": "1.1.0", spec.VALID_ATTACHMENTS_KEY: [
        {"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]})
    assert parse_valid_attachments(conf) == {("a", "eth0"), ("b", "net1")}
    assert parse_valid_attachments({spec.VALID_ATTACHMENTS_KEY: []}) == set()
    for bad in (None, "x", [1], [{"containerID": "a"}], [{"containerID": "", "ifname": "e"}]):
        raw = {} if bad is None else {spec.VALID_ATTACHMENTS_KEY: bad}
        assert code_of(parse_valid_attachments, raw) == 7


# --- results -------------------------------------------------------------------------------------


def sample() -> Result:
    return Result(
        interfaces=[Interface("cali0123456789a", "ee:ee:ee:ee:ee:ee", mtu=1500),
                    Interface("eth0", "0a:58:0a:00:00:05", "/var/run/netns/p", mtu=1500)],
        ips=[IPConfig("10.0.0.5/32", interface=1), IPConfig("fd00::5/128", interface=1)],
        routes=[Route("0.0.0.0/0", "169.254.1.1"), Route("::/0", "fe80::ecee:eeff:feee:eeee")],
        dns={"nameservers": ["10.96.0.10"]},
    )


def test_result_1x() -> None:
    out = sample().to_dict("1.0.0")
    assert out == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cali0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                       {"name": "eth0", "mac": "0a:58:0a:00:00:05",
                        "sandbox": "/var/run/netns/p"}],
        "ips": [{"address": "10.0.0.5/32", "interface": 1},
                {"address": "fd00::5/128", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                   {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}],
        "dns": {"nameservers": ["10.96.0.10"]},
    }
    out11 = sample().to_dict("1.1.0")
    assert out11["cniVersion"] == "1.1.0"
    assert out11["interfaces"][1]["mtu"] == 1500  # interface mtu is new in 1.1.0


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_0x_has_ip_versions(version: str) -> None:
    out = sample().to_dict(version)
    assert out["cniVersion"] == version
    assert out["ips"] == [{"version": "4", "address": "10.0.0.5/32", "interface": 1},
                          {"version": "6", "address": "fd00::5/128", "interface": 1}]
    assert "mtu" not in out["interfaces"][0]


def test_ipam_only_result() -> None:
    out = Result(ips=[IPConfig("10.0.0.5/32")]).to_dict("1.0.0")
    assert out == {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/32"}], "dns": {}}


def test_result_to_unsupported_version() -> None:
    assert code_of(sample().to_dict, "0.2.0") == 1


@pytest.mark.parametrize("version", spec.SUPPORTED_VERSIONS)
def test_result_round_trip(version: str) -> None:
    back = parse_result(json.loads(json.dumps(sample().to_dict(version))))
    want = sample()
    if version != "1.1.0":
        for i in want.interfaces:
            i.mtu = None
    assert back == want


def test_prev_result_from_other_plugins() -> None:
    """A 0.4.0 result of a bridge plugin, passed through a chain."""
    prev = {"cniVersion": "0.4.0",
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "veth1", "mac": "aa:bb:cc:dd:ee:00"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01",
                            "sandbox": "/var/run/netns/x"}],
            "ips": [{"version": "4", "interface": 2, "address": "10.1.0.5/24",
                     "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    res = parse_result(prev)
    assert res.container_interface("eth0") == 2
    assert res.ips[0].gateway == "10.1.0.1" and res.ips[0].version == 4
    assert res.to_dict("1.0.0")["ips"] == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1",
                                            "interface": 2}]
    conf = parse_config({**GOOD_CONF, "prevResult": prev})
    assert conf.prev_result == res


@pytest.mark.parametrize("bad", [
    {"ips": [{"address": "10.0.0.1"}]},
    {"ips": [{"address": "nope/32"}]},
    {"ips": [{"address": "10.0.0.1/32", "interface": 0}]},
    {"ips": [{"address": "10.0.0.1/32", "version": "6"}]},
    {"ips": [{"address": "10.0.0.1/32", "gateway": "x"}]},
    {"interfaces": [{"mac": "x"}]},
    {"routes": [{"gw": "10.0.0.1"}]},
    {"routes": [{"dst": "bad"}]},
    {"dns": []},
    {"ips": {}},
    {"interfaces": "eth0"},
    {"cniVersion": "0.2.0", "ip4": {}},
])
def test_invalid_result(bad: dict[str, Any]) -> None:
    assert code_of(parse_result, bad) in (1, 6)


def test_version_info_and_errors() -> None:
    assert spec.version_info("0.3.1") == {"cniVersion": "0.3.1",
                                          "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
    assert spec.version_info("9.9.9")["cniVersion"] == spec.LATEST_VERSION
    e = CNIError(11, "try later", "socket x")
    assert e.to_dict("0.4.0") == {"cniVersion": "0.4.0", "code": 11, "msg": "try later",
                                  "details": "socket x"}
    assert e.to_dict("junk")["cniVersion"] == spec.LATEST_VERSION
    assert "details" not in CNIError(4, "m").to_dict()
    assert spec.version_at_least("1.1.0", "1.0.0") and not spec.version_at_least("0.4.0",
                                                                                 "1.0.0")


def test_plugin_agrees_with_spec() -> None:
    """plugin.py cannot import cni.spec (stdlib-only, run without its package on the path)."""
    assert plugin.SUPPORTED_VERSIONS == spec.SUPPORTED_VERSIONS
    assert plugin.LATEST_VERSION == spec.LATEST_VERSION
    assert (plugin.ERR_DECODE, plugin.ERR_TRY_AGAIN_LATER, plugin.ERR_IO,
            plugin.ERR_INVALID_CONFIG) == (spec.ERR_DECODE, spec.ERR_TRY_AGAIN_LATER,
                                           spec.ERR_IO, spec.ERR_INVALID_CONFIG)
    assert (plugin.ERR_INVALID_ENV, plugin.ERR_INTERNAL, plugin.MAX_TIMEOUT) == (
        spec.ERR_INVALID_ENV, spec.ERR_INTERNAL, spec.MAX_TIMEOUT)


@pytest.mark.parametrize("value", [
    {"a": [1, 2.5, "x\u00e9\n\"", None, True, False, {"b": {}}], "c": -3, "d": 1e20},
    [], "", 0, {"cniVersion": "1.0.0", "name": "n"},
])
def test_plugin_json_codec(value: Any) -> None:
    assert plugin.json_loads(plugin.json_dumps(value)) == value
    assert plugin.json_loads(json.dumps(value, indent=2)) == value
    assert json.loads(plugin.json_dumps(value)) == value


@pytest.mark.parametrize("text", [
    "{nope", '{"a": }', '"x', '{"a":1} x', "[1,2", "", "NaN", '{"timeout": Infinity}',
    "[-Infinity]", '{"mtu": 1e400}', "1" * 5000, "[" * 1100 + "]" * 1100,
    '{"a":' * 100_000 + "1" + "}" * 100_000,
])
def test_plugin_json_errors(text: str) -> None:
    """Only ValueError: not JSON, NaN / Infinity / out-of-range numbers, too deep."""
    with pytest.raises(ValueError):
        plugin.json_loads(text)


def test_plugin_nesting_depth() -> None:
    assert plugin.nesting_depth(5, 10) == 0
    assert plugin.nesting_depth({"a": [1, {"b": []}]}, 10) == 4
    deep: Any = []
    for _ in range(10_000):
        deep = [deep]
    assert plugin.nesting_depth(deep, 64) == 65  # counting stops above the limit


def run_plugin_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                    stdin: bytes, env: dict[str, str] | None = None) -> tuple[int, Any]:
    """plugin.main in this process, its stdout decoded (it must be one JSON line)."""
    for key in (*plugin.ENV_KEYS, plugin.SOCKET_ENV):
        monkeypatch.delenv(key, raising=False)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", plugin.SOCKET_ENV: "/nonexistent/tortie-test.sock",
           **(env or {})}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    rc = plugin.main(["tortie"])
    out = capsys.readouterr()
    assert out.err == ""
    lines = out.out.splitlines()
    assert len(lines) == 1, out.out[:500]
    return rc, json.loads(lines[0])


GOOD_STDIN = {"cniVersion": "1.0.0", "name": "net", "type": "tortie"}


@pytest.mark.parametrize("case,stdin,env,code", [
    ("deep-1100", b"[" * 1100 + b"]" * 1100, None, 6),
    ("deep-100k", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, None, 6),
    ("deep-65", json.dumps({**GOOD_STDIN, "x": json.loads("[" * 65 + "]" * 65)}).encode(),
     None, 6),
    ("timeout-infinity", b'{"cniVersion":"1.0.0","name":"n","type":"t","timeout":Infinity}',
     None, 6),
    ("timeout-nan", b'{"cniVersion":"1.0.0","name":"n","type":"t","timeout":NaN}', None, 6),
    ("timeout-1e400", b'{"cniVersion":"1.0.0","name":"n","type":"t","timeout":1e400}', None, 6),
    ("timeout-1e300", json.dumps({**GOOD_STDIN, "timeout": 1e300}).encode(), None, 7),
    ("timeout-string", json.dumps({**GOOD_STDIN, "ipam": {"timeout": "5"}}).encode(), None, 7),
    ("16MB", json.dumps({**GOOD_STDIN, "x": "a" * (16 << 20)}).encode(), None, 7),
    ("5000-digits", b'{"cniVersion":"1.0.0","mtu":' + b"1" * 5000 + b"}", None, 6),
    ("not-utf8", b'\xff{"cniVersion":"1.0.0"}', None, 6),
    ("not-an-object", b"[1]", None, 7),
    ("empty", b"", None, 6),
    ("socket-relative", json.dumps({**GOOD_STDIN, "socket": "x.sock"}).encode(), None, 7),
    ("socket-nul", json.dumps({**GOOD_STDIN, "socket": "/x\u0000y"}).encode(), None, 7),
    ("socket-too-long", json.dumps({**GOOD_STDIN, "socket": "/" + "s" * 200}).encode(), None,
     7),
    ("socket-env-relative", json.dumps(GOOD_STDIN).encode(),
     {plugin.SOCKET_ENV: "relative.sock"}, 4),
    ("daemon-absent", json.dumps(GOOD_STDIN).encode(), None, 11),
])
def test_plugin_answers_every_input_with_a_spec_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str,
        stdin: bytes, env: dict[str, str] | None, code: int) -> None:
    """Regression: tracebacks with an empty stdout for deep nesting (RecursionError) and for
    ``"timeout": Infinity`` (OverflowError); code 11 for a 16 MB configuration."""
    rc, out = run_plugin_main(monkeypatch, capsys, stdin, env)
    assert rc == 1
    assert out["code"] == code, out
    assert out["msg"] and out["cniVersion"] in spec.SUPPORTED_VERSIONS
    assert len(json.dumps(out)) < 1000


def test_plugin_fuzz_never_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Random damage to a good configuration: always exactly one CNI error object."""
    rnd = random.Random(15)
    good = json.dumps({**GOOD_STDIN, "ipam": {"type": "tortie-ipam", "timeout": 5},
                       "dns": {"nameservers": ["10.96.0.10"]}}).encode()
    junk = [b"[", b"]", b"{", b"}", b'"', b"\\", b"\xff", b"\x00", b"1e999", b"NaN",
            b"Infinity", b"-", b"9" * 50, b",", b":", b"\\ud800", b"null", b"true"]
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(len(data) + 1)
            op = rnd.randrange(3)
            if op == 0:
                data[at:at] = rnd.choice(junk)
            elif op == 1:
                del data[at:at + rnd.randint(1, 8)]
            else:
                data[at:at] = bytes([rnd.randrange(256)])
        env = {"CNI_COMMAND": rnd.choice(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION",
                                          "", "FROB"])}
        rc, out = run_plugin_main(monkeypatch, capsys, bytes(data), env)
        if rc == 0:  # VERSION answers even for a damaged configuration
            assert "supportedVersions" in out
        else:
            assert isinstance(out["code"], int) and out["msg"], out


def test_names() -> None:
    # Calico's host veth: "cali" + the first 11 hex digits of sha1("<namespace>.<pod>")
    assert host_veth_name("cali", "default", "nginx", "c1") == "cali" + \
        __import__("hashlib").sha1(b"default.nginx").hexdigest()[:11]
    assert host_veth_name("cali", None, None, "c1") == "cali" + \
        __import__("hashlib").sha1(b"c1").hexdigest()[:11]
    assert len(host_veth_name("tortie", "a", "b", "c")) == 15
    assert workload_endpoint_name("node-1", "k8s", "web-0", "eth0") == \
        "node--1-k8s-web--0-eth0"
    assert workload_endpoint_name("n1", "cni", "ABC_def", "eth0") == "n1-cni-abc-def-eth0"


def test_result_after_prev_result() -> None:
    """In a chain, a plugin's result carries the prevResult through, indexes shifted."""
    prev = Result(interfaces=[Interface("lo", sandbox="/var/run/netns/p")],
                  ips=[IPConfig("127.0.0.1/8", interface=0)], routes=[Route("127.0.0.0/8")],
                  dns={"search": ["x"]})
    out = sample().after(prev).to_dict("1.0.0")
    assert [i["name"] for i in out["interfaces"]] == ["lo", "cali0123456789a", "eth0"]
    assert [(i["address"], i["interface"]) for i in out["ips"]] == [
        ("127.0.0.1/8", 0), ("10.0.0.5/32", 2), ("fd00::5/128", 2)]
    assert out["routes"][0] == {"dst": "127.0.0.0/8"}
    assert out["dns"] == {"nameservers": ["10.96.0.10"]}
    assert Result().after(prev).dns == {"search": ["x"]}
    assert sample().after(None) == sample()
