"""The command line's configuration errors (no etcd needed: it fails before connecting)."""

from __future__ import annotations

from tests.support.cli import tortie


def test_bad_configuration_names_its_source() -> None:
    r = tortie("ftp://127.0.0.1:1", "get", "ippools")
    assert r.code == 1 and "TORTIE_ETCD_ENDPOINTS" in r.err
