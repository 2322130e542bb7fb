"""FelixConfiguration ``vxlanPort`` / ``vxlanVNI``: which values a node's VXLAN devices get
(datastore/vxlan_settings.py), and the values ``tortie apply`` refuses."""

from __future__ import annotations

from typing import Any

import pytest

from datastore.model_base import ResourceInvalid
from datastore.model_config import FelixConfiguration, felix_setting
from datastore.vxlan_settings import VXLAN_PORT, VXLAN_VNI, VXLANSettings, vxlan_settings
from routing.vxlan import VXLANConfig


def felix(name: str, **spec: Any) -> FelixConfiguration:
    return FelixConfiguration.from_dict({
        "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
        "metadata": {"name": name}, "spec": spec})


def test_calicos_defaults_without_configuration() -> None:
    assert (VXLAN_PORT, VXLAN_VNI) == (4789, 4096)
    assert vxlan_settings({}, "n1") == VXLANSettings(4789, 4096)
    # a FelixConfiguration that sets neither keeps them
    assert vxlan_settings({"default": felix("default", vxlanMTU=1400)}, "n1") == \
        VXLANSettings(4789, 4096)


def test_default_applies_to_every_node() -> None:
    configs = {"default": felix("default", vxlanPort=4790, vxlanVNI=4097)}
    assert vxlan_settings(configs, "n1") == VXLANSettings(port=4790, vni=4097)
    assert vxlan_settings(configs, "n2") == VXLANSettings(port=4790, vni=4097)


def test_node_configuration_overrides_default_field_by_field() -> None:
    configs = {"default": felix("default", vxlanPort=4790, vxlanVNI=4097),
               "node.n1": felix("node.n1", vxlanVNI=5000)}
    # n1: its own VNI, the default's port
    assert vxlan_settings(configs, "n1") == VXLANSettings(port=4790, vni=5000)
    # another node's configuration is not n1's
    assert vxlan_settings(configs, "n2") == VXLANSettings(port=4790, vni=4097)
    # a node configuration alone: the defaults fill in what it leaves unset
    only_node = {"node.n1": felix("node.n1", vxlanPort=8472)}
    assert vxlan_settings(only_node, "n1") == VXLANSettings(port=8472, vni=4096)
    assert vxlan_settings(only_node, "n2") == VXLANSettings(port=4789, vni=4096)


def test_felix_setting_is_the_one_rule_for_every_field() -> None:
    configs = {"default": felix("default", vxlanMTU=1400, vxlanPort=4790),
               "node.n1": felix("node.n1", vxlanMTU=1300)}
    assert felix_setting(configs, "n1", "vxlanMTU") == 1300
    assert felix_setting(configs, "n1", "vxlanPort") == 4790
    assert felix_setting(configs, "n2", "vxlanMTU") == 1400
    assert felix_setting(configs, "n1", "vxlanVNI") is None
    assert felix_setting({}, "n1", "vxlanPort") is None


def test_the_device_config_carries_them_with_calicos_defaults() -> None:
    cfg = VXLANConfig(local="192.0.2.1", address="10.244.0.1", mac="02:00:00:00:00:01")
    assert (cfg.port, cfg.vni) == (4789, 4096)
    s = vxlan_settings({"default": felix("default", vxlanPort=4790, vxlanVNI=1)}, "n1")
    cfg = VXLANConfig(local="192.0.2.1", address="10.244.0.1", mac="02:00:00:00:00:01",
                      port=s.port, vni=s.vni)
    assert (cfg.port, cfg.vni) == (4790, 1)


@pytest.mark.parametrize(("spec", "field"), [
    ({"vxlanPort": 0}, "spec.vxlanPort"),
    ({"vxlanPort": 65536}, "spec.vxlanPort"),
    ({"vxlanPort": -1}, "spec.vxlanPort"),
    ({"vxlanPort": "4790"}, "spec.vxlanPort"),
    ({"vxlanVNI": 0}, "spec.vxlanVNI"),
    ({"vxlanVNI": 16777216}, "spec.vxlanVNI"),
    ({"vxlanVNI": -4096}, "spec.vxlanVNI"),
    ({"vxlanVNI": 4096.5}, "spec.vxlanVNI"),
])
def test_out_of_range_values_are_refused_naming_the_field(spec: dict[str, Any],
                                                          field: str) -> None:
    with pytest.raises(ResourceInvalid) as e:
        felix("default", **spec)
    assert f"{field}:" in str(e.value)
    assert "FelixConfiguration(default)" in str(e.value)


@pytest.mark.parametrize(("port", "vni"), [(1, 1), (65535, 16777215), (4789, 4096)])
def test_the_edges_of_the_ranges_are_accepted(port: int, vni: int) -> None:
    cfg = felix("default", vxlanPort=port, vxlanVNI=vni)
    assert vxlan_settings({"default": cfg}, "n1") == VXLANSettings(port=port, vni=vni)
