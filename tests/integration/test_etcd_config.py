"""EtcdConfig against etcd: bounded connecting, multiple endpoints, TLS, auth (loading and
validation: tests/unit/test_etcd_config.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore.etcd_config import EtcdConfig
from datastore.store import DatastoreError, NotFound, Store, Unavailable, WatchEvent
from lab.etcd import EtcdProcess, free_port, make_tls_files, run_etcd

P = "/tortie/v3/cfgtest/"

pytestmark = pytest.mark.usefixtures("no_default_config_file")


# -- connecting (real etcd) -------------------------------------------------------------------


@contextlib.contextmanager
def mute_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says anything."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def connect_fails(cfg: EtcdConfig) -> tuple[Unavailable, float]:
    started = time.monotonic()
    with pytest.raises(Unavailable) as exc:
        async with Store(cfg):
            pass
    return exc.value, time.monotonic() - started


@pytest.mark.integration
async def test_closed_port_is_unavailable_quickly() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    err, elapsed = await connect_fails(EtcdConfig(endpoints=(endpoint,), timeout=1.0))
    assert elapsed < 1.0 + 1
    assert str(err).startswith(f"etcd unreachable at {endpoint} (no answer within 1.0s)")
    # Lazily connecting calls fail the same way.
    s = Store(EtcdConfig(endpoints=(endpoint,), timeout=1.0))
    with pytest.raises(Unavailable, match=endpoint):
        await s.get(P + "x")
    await s.close()


@pytest.mark.integration
async def test_mute_listener_is_unavailable_within_timeout() -> None:
    with mute_listener() as port:
        endpoint = f"http://127.0.0.1:{port}"
        err, elapsed = await connect_fails(EtcdConfig(endpoints=(endpoint,), timeout=1.0))
    assert 0.9 < elapsed < 1.0 + 1
    assert str(err).startswith(f"etcd unreachable at {endpoint} (no answer within 1.0s)")


@pytest.mark.integration
async def test_endpoints_are_tried_in_order(etcd_server: EtcdProcess) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with mute_listener() as port:
        mute = f"http://127.0.0.1:{port}"
        cfg = EtcdConfig(endpoints=(down, mute, etcd_server.endpoint), timeout=0.5)
        started = time.monotonic()
        async with Store(cfg) as s:
            assert s.endpoint == etcd_server.endpoint
            await s.put(P + "x", {"v": 1})
            assert (await s.delete(P + "x")).value == {"v": 1}
        assert time.monotonic() - started < 0.5 + 1
        # All up: the first one is used.
        async with Store(EtcdConfig(endpoints=(etcd_server.endpoint, mute))) as s:
            assert s.endpoint == etcd_server.endpoint
        # All down: the message names every endpoint and why.
        err, elapsed = await connect_fails(EtcdConfig(endpoints=(down, mute), timeout=0.5))
    assert elapsed < 2 * 0.5 + 1
    message = str(err)
    assert message.startswith(f"etcd unreachable at {down}, {mute} (no answer within 0.5s each)")
    assert f"{down}: " in message and "Connection refused" in message
    assert f"{mute}: timed out" in message


@pytest.mark.integration
async def test_tls_with_client_certificates(scratch_dir: Path) -> None:
    with run_etcd(scratch_dir, tls=True) as etcd:
        assert etcd.tls is not None and etcd.endpoint.startswith("https://127.0.0.1:")
        cfg = EtcdConfig.load(
            endpoints=etcd.endpoint,
            ca_cert_file=str(etcd.tls.ca_cert),
            cert_file=str(etcd.tls.client_cert),
            key_file=str(etcd.tls.client_key),
            timeout=2.0,
            env={},
        )
        async with Store(cfg) as s:
            rev = await s.revision()
            watch = s.watch(P, rev)
            kv = await s.create(P + "tls", {"secure": True})
            assert await s.get(P + "tls") == kv
            event = await asyncio.wait_for(anext(watch), 5)
            assert event.key == P + "tls"
            await watch.aclose()

        # Without a client certificate the server refuses us.
        no_cert = EtcdConfig(endpoints=(etcd.endpoint,), ca_cert_file=str(etcd.tls.ca_cert),
                             timeout=2.0)
        err, elapsed = await connect_fails(no_cert)
        assert elapsed < 2.0 + 1
        assert str(err).startswith(f"etcd unreachable at {etcd.endpoint}")
        assert "requires a client certificate" in str(err)
        assert "none is configured" in str(err)

        # A server certificate from an unknown CA is refused by us.
        other = make_tls_files(scratch_dir / "other-ca")
        wrong_ca = EtcdConfig(
            endpoints=(etcd.endpoint,), ca_cert_file=str(other.ca_cert),
            cert_file=str(etcd.tls.client_cert), key_file=str(etcd.tls.client_key),
            timeout=2.0,
        )
        err, _ = await connect_fails(wrong_ca)
        assert str(err).startswith(f"etcd unreachable at {etcd.endpoint}")
        assert "certificate is not trusted" in str(err)
        assert str(other.ca_cert) in str(err)

        # Plain http against the https port.
        plain = "http://" + etcd.endpoint.removeprefix("https://")
        err, _ = await connect_fails(EtcdConfig(endpoints=(plain,), timeout=2.0))
        assert str(err).startswith(f"etcd unreachable at {plain}")
        assert "does it expect https?" in str(err)


@pytest.mark.integration
async def test_username_and_password(scratch_dir: Path) -> None:
    with run_etcd(scratch_dir) as etcd:
        etcd.etcdctl("user", "add", "root:rootpw")
        etcd.etcdctl("auth", "enable")
        cfg = EtcdConfig(endpoints=(etcd.endpoint,), username="root", password="rootpw")
        async with Store(cfg) as s:
            kv = await s.put(P + "auth", {"v": 1})
            assert await s.get(P + "auth") == kv
            watch = s.watch(P, kv.mod_revision - 1)
            event = await asyncio.wait_for(anext(watch), 5)
            assert event == WatchEvent("put", kv.key, kv.value, kv.mod_revision, None)
            await watch.aclose()
        with pytest.raises(DatastoreError, match=f"etcd at {etcd.endpoint} rejected the login "
                           "of user 'root': .*invalid user ID or password"):
            async with Store(EtcdConfig(endpoints=(etcd.endpoint,), username="root",
                                        password="wrong")):
                pass
        # Without credentials the connection works but requests are refused.
        async with Store(EtcdConfig(endpoints=(etcd.endpoint,))) as anonymous:
            with pytest.raises(DatastoreError, match=r"user name is empty|permission denied"):
                await anonymous.get(P + "auth")


@pytest.mark.integration
async def test_concurrent_callers_share_one_bounded_connect_attempt() -> None:
    with mute_listener() as port:
        s = Store(EtcdConfig(endpoints=(f"http://127.0.0.1:{port}",), timeout=1.0))
        started = time.monotonic()
        results = await asyncio.gather(
            *(s.get(P + f"k{i}") for i in range(20)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        await s.close()
    assert all(isinstance(r, Unavailable) for r in results), results
    assert elapsed < 1.0 + 1


@pytest.mark.integration
async def test_fails_over_to_the_next_endpoint(scratch_dir: Path) -> None:
    with run_etcd(scratch_dir) as first, run_etcd(scratch_dir) as second:
        cfg = EtcdConfig(endpoints=(first.endpoint, second.endpoint), timeout=1.0)
        async with Store(cfg) as s:
            assert s.endpoint == first.endpoint
            await s.put(P + "x", {"on": "first"})
            first.stop()
            # The call in flight when the connection breaks reports it...
            with pytest.raises(Unavailable, match=first.endpoint):
                await s.get(P + "x")
            # ...and the next one reconnects, trying the endpoints in order.
            started = time.monotonic()
            with pytest.raises(NotFound):  # a different (independent) etcd
                await s.get(P + "x")
            assert s.endpoint == second.endpoint
            assert time.monotonic() - started < 1.0 + 1


@pytest.mark.integration
async def test_expired_auth_token_is_renewed(scratch_dir: Path) -> None:
    with run_etcd(scratch_dir, extra_args=("--auth-token-ttl", "1")) as etcd:
        etcd.etcdctl("user", "add", "root:rootpw")
        etcd.etcdctl("auth", "enable")
        cfg = EtcdConfig(endpoints=(etcd.endpoint,), username="root", password="rootpw")
        async with Store(cfg) as s:
            kv = await s.put(P + "a", {"v": 1})
            await asyncio.sleep(2.5)  # the token expires (etcd checks TTLs every second)
            assert await s.get(P + "a") == kv  # re-authenticated and retried
            await asyncio.sleep(2.5)
            # A watch created with an expired token: etcd cancels it; we log in again.
            watch = s.watch(P, kv.mod_revision - 1)
            event = await asyncio.wait_for(anext(watch), 5)
            assert event == WatchEvent("put", kv.key, kv.value, kv.mod_revision, None)
            await watch.aclose()
