"""nft_apply through libnftables (in-process) and through the nft process: same results.

Real nftables in scratch network namespaces."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from cni.netlink import run_in_netns
from policyagent import nft_apply
from tests.support.tools import require_tools

pytestmark = pytest.mark.integration

SCRIPT = """table inet tortie {
\tset s4 {
\t\ttype ipv4_addr; flags interval;
\t\telements = { 10.0.0.0/24, 10.1.0.1/32 }
\t}
\tchain c1 {
\t\tip saddr @s4 counter accept comment "r1"
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tjump c1
\t}
}
"""
BAD = "table inet tortie {\n\tchain c2 {\n\t\tip saddr @nosuchset accept\n\t}\n}\n"


@pytest.fixture
def netns() -> Iterator[str]:
    require_tools("libnftables")
    name = f"tnab-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_same_table_and_errors_as_the_nft_process(netns: str) -> None:
    nft_apply.apply(SCRIPT, netns)
    # what the library applied, as the nft process lists it (and the other way round)
    via_cli = nft_apply._run_cli(["-j", "list", "table", "inet", "tortie"], netns, None, 30)
    assert nft_apply.run(["-j", "list", "table", "inet", "tortie"], netns) == via_cli
    assert '"r1"' in via_cli and "10.1.0.1" in via_cli
    # a refused script: the same message, with the offending line, and nothing applied
    with pytest.raises(nft_apply.NftError) as lib_err:
        nft_apply.apply(BAD, netns)
    with pytest.raises(nft_apply.NftError) as cli_err:
        nft_apply._run_cli(["-f", "-"], netns, BAD, 30)
    assert lib_err.value.lines == cli_err.value.lines == [(3, "ip saddr @nosuchset accept")]
    assert "c2" not in nft_apply.run(["list", "table", "inet", "tortie"], netns)
    # check only (-c): validated, not applied
    nft_apply.check(SCRIPT.replace("c1", "c3").replace("jump c3", "jump c1"), netns)
    assert "c3" not in nft_apply.run(["list", "table", "inet", "tortie"], netns)
    nft_apply.delete_table("tortie", netns)
    assert "tortie" not in nft_apply._run_cli(["list", "tables"], netns, None, 30)


def test_kept_context_follows_the_calling_threads_namespace(netns: str) -> None:
    """With no netns named, the context of the calling thread's namespace is used (and kept):
    a thread inside the scratch namespace programs that one, not the test's."""
    def inside() -> str:
        nft_apply.apply(SCRIPT)
        nft_apply.apply(SCRIPT)  # the kept context, again
        return nft_apply.run(["list", "tables"])

    assert "table inet tortie" in run_in_netns(f"/var/run/netns/{netns}", inside)
    try:
        assert "c1" in nft_apply._run_cli(["list", "table", "inet", "tortie"], netns, None, 30)
    finally:
        nft_apply.release()  # the kept context would keep the deleted namespace alive


def test_apply_goes_through_the_library(netns: str) -> None:
    """``apply`` runs in-process: the error names the in-memory script, not /dev/stdin."""
    with pytest.raises(nft_apply.NftError) as err:
        nft_apply.apply(BAD, netns)
    assert "/dev/stdin" not in err.value.message and "/proc/self/fd/" in err.value.message
