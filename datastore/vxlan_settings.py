"""The UDP port and VNI of Tortie's VXLAN: FelixConfiguration ``vxlanPort`` / ``vxlanVNI``.

As Calico's: 4789 and 4096 unless set; one port and one VNI for both devices
(``vxlan.tortie`` and ``vxlan-v6.tortie``, as Calico's ``vxlan.calico`` and
``vxlan-v6.calico``: Calico has no ``vxlanPortV6`` / ``vxlanVNIV6``).  FelixConfiguration
``node.<node>`` overrides ``default`` field by field.  The routing agent makes the devices
with them (routing/vxlan.py), the policy agent lets the port through host endpoints between
nodes (policyagent/program_assembly.py).  The resources' validation keeps them in range
(port 1..65535, VNI 1..16777215).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from datastore.model_config import FelixConfiguration, felix_setting

#: the UDP port of VXLAN when ``vxlanPort`` is not set (IANA's, and Calico's default)
VXLAN_PORT: Final = 4789
#: the VNI when ``vxlanVNI`` is not set (Calico's default)
VXLAN_VNI: Final = 4096


@dataclass(frozen=True)
class VXLANSettings:
    port: int = VXLAN_PORT
    vni: int = VXLAN_VNI


def vxlan_settings(configs: Mapping[str, FelixConfiguration], node: str) -> VXLANSettings:
    """The port and VNI of ``node``'s VXLAN devices."""
    port = felix_setting(configs, node, "vxlanPort")
    vni = felix_setting(configs, node, "vxlanVNI")
    return VXLANSettings(port=int(port) if port else VXLAN_PORT,
                         vni=int(vni) if vni else VXLAN_VNI)
