"""The speaker's use of ExaBGP's API against a fake ExaBGP that behaves like ExaBGP 5's
reactor where it matters, deterministically:

* a route command that matches no configured neighbour is answered ``error``;
* ``reload`` is answered ``done`` at once and applied before the next command is handled,
  or *discarded* (ExaBGP does so when an adj-rib-out is still pending);
* ``show neighbor configuration`` prints the neighbours of the configuration it runs;
* an applied reload is logged (``APPLIED reload``): ExaBGP then drops every End-of-RIB still
  queued for a neighbour, so each End-of-RIB before it may be lost.

The fake runs the API process the rendered configuration names (our relay), so the whole
path (launch.py, relay.py, the unix socket) is the real one.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from routing.bgp.api import BGPSettings, Neighbour
from routing.bgp.speaker import ExaBGPSpeaker, SpeakerError, configured_neighbours
from tests.support.wait import until

FAKE_EXABGP = '''\
import json, os, re, shlex, subprocess, sys
conf = sys.argv[1]
text = lambda: open(conf).read()
def neighbours():
    return re.findall(r"^neighbor (\\S+) \\{", text(), re.M)
run = shlex.split(re.search(r"run (.*);", text()).group(1))
relay = subprocess.Popen(run, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         bufsize=1)
applied = neighbours()
discard = int(os.environ.get("FAKE_DISCARD", "0"))
log = open(os.environ["FAKE_LOG"], "a", buffering=1)
def say(line):
    relay.stdin.write(line + "\\n")
def up(addresses):
    for a in addresses:
        say(json.dumps({"type": "state", "neighbor": {"address": {"peer": a},
                                                       "state": "up"}}))
up(applied)
reload_asked = False
for line in relay.stdout:
    cmd = line.strip()
    if reload_asked:  # the reactor's next loop turn: apply the reload, or discard it
        reload_asked = False
        if discard:
            discard -= 1
            log.write("DISCARDED reload\\n")
        else:
            before, applied = applied, neighbours()
            log.write("APPLIED reload\\n")
            up([a for a in applied if a not in before])
    answer = "done"
    if cmd == "reload":
        reload_asked = True
        say("reload in progress")
    elif cmd == "show neighbor configuration":
        for a in applied:
            say(f"neighbor {a} {{")
            say("\\tdescription x;")
            say("}")
    elif " route " in cmd or " eor " in cmd:
        head = re.split(r"\\b(?:announce|withdraw)\\b", cmd)[0]
        named = re.findall(r"neighbor (\\S+)", head)
        known = [a for a in named if a in applied] if named else applied
        if not known:
            answer = "error"
    log.write(f"{answer} {cmd}\\n")
    say(answer)
'''

ME = "192.0.2.11"


def settings(*peers: str) -> BGPSettings:
    return BGPSettings(router_id=ME, local_address=ME, asn=64512,
                       neighbours=tuple(Neighbour(p, 64512, name=p) for p in peers))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "exabgp"
    exe.write_text(f"#!{sys.executable}\n{FAKE_EXABGP}")
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "commands.log"))
    return exe


def commands(tmp_path: Path) -> list[str]:
    return (tmp_path / "commands.log").read_text().splitlines()


def _run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def test_show_neighbor_configuration_is_parsed() -> None:
    text = ["neighbor 192.0.2.12 {", "\tdescription \"mesh:n2\";", "}",
            "neighbor 192.0.2.1 {", "}", "reload in progress"]
    assert configured_neighbours(text) == {"192.0.2.12", "192.0.2.1"}


def test_no_neighbour_yet_nothing_is_refused(fake: Path, tmp_path: Path) -> None:
    """The first node of a cluster: routes wait for a neighbour instead of being refused."""
    async def body() -> None:
        sp = ExaBGPSpeaker(tmp_path / "run", str(fake), eor_timeout=60)
        try:
            await sp.start(settings())
            await sp.announce({"10.65.1.0/26": ME})
            await sp.announce({"10.65.1.0/26": ME, "10.65.1.64/26": ME})
            await sp.configure(settings("192.0.2.12"))
            await until(lambda: any("neighbor 192.0.2.12 announce eor" in c
                                    for c in commands(tmp_path)), what="End-of-RIB")
        finally:
            await sp.close()
        log = commands(tmp_path)
        assert not [c for c in log if c.startswith("error")], log
        routes = [c for c in log if "announce route" in c]
        assert routes == [
            "done neighbor 192.0.2.12 announce route 10.65.1.0/26 next-hop 192.0.2.11",
            "done neighbor 192.0.2.12 announce route 10.65.1.64/26 next-hop 192.0.2.11"]
        eor = log.index("done neighbor 192.0.2.12 announce eor ipv4 unicast")
        assert eor > log.index("done " + routes[-1][5:])  # routes first, then End-of-RIB
    _run(body())


@pytest.mark.parametrize("discarded", [1, 3])
def test_a_discarded_reload_is_sent_again(fake: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          discarded: int) -> None:
    """ExaBGP acks ``reload`` and may discard it: the speaker sees the configuration did
    not change and sends it again; no command names the new neighbour before that."""
    monkeypatch.setenv("FAKE_DISCARD", str(discarded))

    async def body() -> None:
        sp = ExaBGPSpeaker(tmp_path / "run", str(fake), eor_timeout=60)
        try:
            await sp.start(settings("192.0.2.12"))
            await sp.announce({"10.65.1.0/26": ME})
            await sp.configure(settings("192.0.2.12", "192.0.2.13"))
            assert sp.reloads_resent == discarded
            await until(
                lambda: "done neighbor 192.0.2.13 announce eor ipv4 unicast"
                in commands(tmp_path), what="the added neighbour gets routes and End-of-RIB")
            # and removing one: confirmed the same way
            await sp.configure(settings("192.0.2.13"))
            await sp.announce({"10.65.1.64/26": ME})
        finally:
            await sp.close()
        log = commands(tmp_path)
        assert not [c for c in log if c.startswith("error")], log
        assert log.count("DISCARDED reload") == discarded
        assert log[-2:] == [
            "done neighbor 192.0.2.13 withdraw route 10.65.1.0/26",
            "done neighbor 192.0.2.13 announce route 10.65.1.64/26 next-hop 192.0.2.11"]
    _run(body())


def test_end_of_rib_is_sent_again_after_each_applied_reload(fake: Path,
                                                            tmp_path: Path) -> None:
    """ExaBGP keeps an ``announce eor`` queued on the neighbour's configuration object until
    the peer's pending routes are out, and an applied reload replaces that object: the
    End-of-RIB is lost and the peer never sees our view as complete.  Every peer that had an
    End-of-RIB in its session gets one after each applied reload."""
    def eors_after_last_reload(peer: str) -> int:
        log = commands(tmp_path)
        last = max(i for i, c in enumerate(log) if c == "APPLIED reload")
        return sum(1 for c in log[last:] if c.startswith("done ") and " announce eor " in c
                   and f"neighbor {peer} " in c + " ")

    async def body() -> None:
        sp = ExaBGPSpeaker(tmp_path / "run", str(fake), eor_timeout=60)
        try:
            await sp.start(settings("192.0.2.12"))
            await sp.announce({"10.65.1.0/26": ME})  # End-of-RIB to .12
            for added in ("192.0.2.13", "192.0.2.14"):  # two nodes join: two reloads
                peers = [a for a in ("192.0.2.12", "192.0.2.13", "192.0.2.14") if a <= added]
                await sp.configure(settings(*peers))
                await until(lambda peers=peers: all(eors_after_last_reload(p) >= 1
                                                    for p in peers),
                            what=f"End-of-RIB to {peers} after the reload adding {added}")
        finally:
            await sp.close()
        assert not [c for c in commands(tmp_path) if c.startswith("error")]
    _run(body())


def test_a_reload_never_applied_fails_and_keeps_the_old_settings(
        fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_DISCARD", "1000")
    monkeypatch.setattr("routing.bgp.speaker.RELOAD_TIMEOUT", 0.5)

    async def body() -> None:
        sp = ExaBGPSpeaker(tmp_path / "run", str(fake), eor_timeout=60)
        try:
            await sp.start(settings("192.0.2.12"))
            with pytest.raises(SpeakerError, match="did not apply"):
                await sp.configure(settings("192.0.2.12", "192.0.2.13"))
            assert sp.settings == settings("192.0.2.12")
            assert "192.0.2.13" not in sp.config_path.read_text()
        finally:
            await sp.close()
    _run(body())


def test_exit_before_the_api_connects_says_how(tmp_path: Path) -> None:
    """A start that fails says why (it once failed with an empty log and no reason)."""
    exe = tmp_path / "exabgp"
    exe.write_text(f"#!{sys.executable}\nimport os, signal\nos.kill(os.getpid(), "
                   "signal.SIGABRT)\n")
    exe.chmod(0o755)

    async def body() -> None:
        sp = ExaBGPSpeaker(tmp_path / "run", str(exe))
        with pytest.raises(SpeakerError, match="killed by SIGABRT"):
            await sp.start(settings())
    _run(body())


def test_environment_keeps_the_log_unbuffered() -> None:
    from routing.bgp.exabgp_config import exabgp_environment
    env = exabgp_environment(settings(), {})
    assert env["PYTHONUNBUFFERED"] == "1"


def test_an_ipv6_session_is_offered_ipv6_routes_only(tmp_path: Path) -> None:
    """Our routes per session: an IPv4 session of a dual-stack node both families (MP-BGP),
    a session over IPv6 the IPv6 prefixes only (no IPv4 route is sent where it cannot go)."""
    sp = ExaBGPSpeaker(tmp_path / "run", "exabgp")
    n4, n6 = Neighbour("192.0.2.12", 64512), Neighbour("2001:db8:0:1::2", 65001, "global")
    settings = BGPSettings("192.0.2.11", "192.0.2.11", 64512, (n4, n6), ipv6=True,
                           local_address6="2001:db8:0:1::11")
    sp.settings = settings
    sp._sync_peers(settings)
    sp._wanted = {"10.244.0.0/26": "192.0.2.11", "fd00:10:244::/122": "2001:db8:0:1::11"}
    assert sp.exported_to("192.0.2.12") == {
        "10.244.0.0/26": "next-hop 192.0.2.11",
        "fd00:10:244::/122": "next-hop 2001:db8:0:1::11"}
    assert sp.exported_to("2001:db8:0:1::2") == {
        "fd00:10:244::/122": "next-hop 2001:db8:0:1::11"}
    assert sp._families_of("2001:db8:0:1::2") == ("ipv6 unicast",)
