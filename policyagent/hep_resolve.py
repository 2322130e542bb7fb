"""Which host endpoint polices which host interface (Felix's host endpoint resolution).

The policy calculation (:mod:`policyagent.calc`) knows host endpoints as resources: one may
name its interface (``interfaceName: eth0``), cover every interface (``interfaceName: "*"``)
or give only ``expectedIPs``. Only the node knows its interfaces and their addresses, so the
agent resolves the model with :func:`resolve` before rendering, and again whenever the host's
interfaces or addresses change (:func:`read_interfaces` lists them).

The rules are Felix's (``endpoint_mgr.go``, ``resolveHostEndpoints``):

* workload interfaces (``cali*``) and excluded ones (``kube-ipvs0``) are never host endpoints;
* a host endpoint with an ``interfaceName`` matches that interface only (its ``expectedIPs``
  then serve only to put its address into other policies' selector sets);
* one without ``interfaceName`` matches every interface holding one of its ``expectedIPs``;
* at most one host endpoint governs an interface: of those matching, the one whose name sorts
  first; the others stay inactive until it goes;
* of the ``interfaceName: "*"`` endpoints, the one whose name sorts first covers every host
  interface that no specific endpoint governs (the renderer's fall-back).

One deliberate difference: a named host endpoint is kept even while its interface does not
exist (nft matches interface names, so its policy is in force the moment the interface
appears, without waiting for the agent to notice).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import subprocess
from collections.abc import Iterable, Mapping

from policyagent.model import DataplaneModel, FrozenMap, HostEndpointProgram
from policyagent.nft_render import WORKLOAD_PREFIX

__all__ = ["ALL_INTERFACES", "DEFAULT_EXCLUDE", "read_interfaces", "resolve",
           "resolve_interfaces"]

#: The key of the all-interfaces (``interfaceName: "*"``) host endpoint in a resolved model.
ALL_INTERFACES = "*"
#: Interfaces Felix never treats as host endpoints by default (``InterfaceExclude``).
DEFAULT_EXCLUDE: tuple[str, ...] = ("kube-ipvs0",)


def _ip(text: str) -> str:
    """``10.0.0.1``, ``10.0.0.1/32`` or ``10.0.0.1/24`` (an interface address) -> ``10.0.0.1``."""
    return str(ipaddress.ip_interface(text.strip()).ip)


def resolve_interfaces(heps: Iterable[HostEndpointProgram],
                       interfaces: Mapping[str, Iterable[str]] | None, *,
                       workload_prefix: str = WORKLOAD_PREFIX,
                       exclude: Iterable[str] = DEFAULT_EXCLUDE) -> dict[str, str]:
    """``{interface: host endpoint name}`` (plus ``"*"`` for the all-interfaces endpoint).

    ``interfaces``: the host's interfaces and their addresses (``{"eth0": ["192.0.2.11/24"]}``);
    ``None`` when unknown -- then only named endpoints resolve."""
    excluded = set(exclude)

    def host_iface(name: str) -> bool:
        return bool(name) and not name.startswith(workload_prefix) and name not in excluded

    best: dict[str, str] = {}

    def offer(iface: str, hep_name: str) -> None:
        if iface not in best or hep_name < best[iface]:
            best[iface] = hep_name

    by_addr: dict[str, set[str]] = {}
    for iface, addrs in (interfaces or {}).items():
        if host_iface(iface):
            for a in addrs:
                by_addr.setdefault(_ip(a), set()).add(iface)
    for hep in heps:
        if hep.all_interfaces:
            offer(ALL_INTERFACES, hep.name)
        elif hep.interface:
            if host_iface(hep.interface):
                offer(hep.interface, hep.name)
        else:
            for addr in hep.addresses:
                for iface in by_addr.get(_ip(addr), ()):
                    offer(iface, hep.name)
    return best


def resolve(model: DataplaneModel, interfaces: Mapping[str, Iterable[str]] | None, *,
            workload_prefix: str = WORKLOAD_PREFIX,
            exclude: Iterable[str] = DEFAULT_EXCLUDE) -> DataplaneModel:
    """``model`` with its host endpoints resolved to interfaces (see the module docstring).

    In the result, ``host_endpoints`` is keyed by interface name (``"*"`` for the
    all-interfaces endpoint) and every program has its ``interface`` set (``None`` only for
    the ``"*"`` one); a host endpoint governing several interfaces appears once per interface
    (same name, so the renderer shares its chains). Endpoints that govern nothing are left
    out. Policies, profiles and IP sets are kept as they are (rendering an unused policy
    chain is harmless)."""
    if not model.host_endpoints:
        return model  # nothing to resolve (the common case: no host endpoints at all)
    heps = {h.name: h for h in model.host_endpoints.values()}
    chosen = resolve_interfaces(heps.values(), interfaces, workload_prefix=workload_prefix,
                                exclude=exclude)
    resolved: dict[str, HostEndpointProgram] = {}
    for iface, name in sorted(chosen.items()):
        hep = heps[name]
        if iface == ALL_INTERFACES or hep.interface == iface:
            resolved[iface] = hep
        else:
            resolved[iface] = dataclasses.replace(hep, interface=iface)
    return dataclasses.replace(model, host_endpoints=FrozenMap(resolved))


def read_interfaces(netns: str | None = None, timeout: float = 10.0, *,
                    workload_prefix: str = WORKLOAD_PREFIX) -> dict[str, list[str]]:
    """The interfaces of this (or ``netns``'s) network namespace with their addresses, as
    ``{"eth0": ["192.0.2.11/24", "fe80::1/64"]}`` (``ip -j addr show``), but for workload
    interfaces (never host endpoints): pods coming and going do not change the result."""
    cmd = ["ip", *(["-n", netns] if netns else []), "-j", "addr", "show"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
    result: dict[str, list[str]] = {}
    for link in json.loads(out or "[]"):
        name = link.get("ifname")
        if not name or name.startswith(workload_prefix):
            continue
        result[name] = [f"{a['local']}/{a.get('prefixlen', 32)}"
                        for a in link.get("addr_info", []) if a.get("local")]
    return result
