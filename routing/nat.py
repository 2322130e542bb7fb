"""natOutgoing: masquerade pod traffic that leaves for outside every IP pool (nftables).

Tortie's NAT lives in its own table ``ip tortie-nat`` (the policy agent owns ``inet
tortie``); the agent replaces that one table atomically and never touches another::

    table ip tortie-nat {
        set masq-pools { type ipv4_addr; flags interval; elements = { <natOutgoing pools> } }
        set all-pools  { type ipv4_addr; flags interval; elements = { <every pool> } }
        set no-masq    { type ipv4_addr; flags interval; elements = { <node, peer addresses> } }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr @masq-pools ip daddr != @all-pools ip daddr != @no-masq masquerade
        }
    }

(Calico's rule: ``-m set --match-set cali40masq-ipam-pools src -m set ! --match-set
cali40all-ipam-pools dst -j MASQUERADE``.) Unlike Calico by default (its
``natOutgoingExclusions: IPPoolsAndHostIPs`` does the same), pod traffic to a node's address
or to a BGP peer is never masqueraded: it would reach that node with another node's address,
the address of one of its BGP peers. Those hosts route to the pods (they learn
their routes), so the pod's own address gets its answer.

IPv6 pools get the same table in the ``ip6`` family (``table ip6 tortie-nat``, sets of
``ipv6_addr``, ``ip6 saddr`` / ``ip6 daddr``): one :class:`OutgoingNAT` per family.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

NFT = "nft"
FAMILY = "ip"
TABLE = "tortie-nat"
SET_TYPE = "type ipv4_addr; flags interval; auto-merge;"
#: per IP version: (nft table family, set type, address keyword)
FAMILIES = {4: (FAMILY, SET_TYPE, "ip"),
            6: ("ip6", "type ipv6_addr; flags interval; auto-merge;", "ip6")}


class NATError(RuntimeError):
    pass


def _elements(cidrs: Sequence[str]) -> str:
    return f" elements = {{ {', '.join(cidrs)} }};" if cidrs else ""


def render(masq_pools: Sequence[str], all_pools: Sequence[str],
           no_masq: Sequence[str] = (), version: int = 4) -> str:
    """The script that replaces the table of IP ``version`` (atomically: one ``nft -f``
    transaction); ``no_masq``: destinations never masqueraded (node and BGP peer
    addresses)."""
    family, set_type, kw = FAMILIES[version]
    return (
        f"table {family} {TABLE} {{}}\n"
        f"delete table {family} {TABLE}\n"
        f"table {family} {TABLE} {{\n"
        f"  set masq-pools {{ {set_type}{_elements(masq_pools)} }}\n"
        f"  set all-pools {{ {set_type}{_elements(all_pools)} }}\n"
        f"  set no-masq {{ {set_type}{_elements(no_masq)} }}\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    {kw} saddr @masq-pools {kw} daddr != @all-pools {kw} daddr != @no-masq counter "
        "masquerade\n"
        "  }\n"
        "}\n")


def render_delete(version: int = 4) -> str:
    family = FAMILIES[version][0]
    return f"table {family} {TABLE} {{}}\ndelete table {family} {TABLE}\n"


async def _nft(script: str, netns: str | None = None) -> str:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = await asyncio.create_subprocess_exec(
        *prefix, NFT, "-f", "-", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        raise NATError(f"nft failed: {err.decode().strip()}")
    return out.decode()


class OutgoingNAT:
    """Keeps ``ip tortie-nat`` (``ip6 tortie-nat`` for ``version=6``) equal to the pools;
    rewrites it only when they change."""

    def __init__(self, netns: str | None = None, version: int = 4) -> None:
        self.netns = netns
        self.version = version
        self.applied: tuple[tuple[str, ...], ...] | None = None

    async def sync(self, masq_pools: Sequence[str], all_pools: Sequence[str],
                   no_masq: Sequence[str] = ()) -> bool:
        want = (tuple(masq_pools), tuple(all_pools), tuple(no_masq))
        if want == self.applied:
            return False
        if masq_pools:
            await _nft(render(masq_pools, all_pools, no_masq, self.version), self.netns)
        else:
            await _nft(render_delete(self.version), self.netns)
        self.applied = want
        return True

    async def remove(self) -> None:
        await _nft(render_delete(self.version), self.netns)
        self.applied = None
