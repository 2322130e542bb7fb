"""How the store encodes values (no etcd needed)."""

from __future__ import annotations

import json

from datastore import store as store_module


def test_values_are_stored_as_compact_sorted_json() -> None:
    raw = store_module.encode_value({"b": {"y": 1, "x": [1, "2"]}, "a": None})
    assert raw == b'{"a":null,"b":{"x":[1,"2"],"y":1}}'
    assert store_module.decode_value(raw, "k") == json.loads(raw)
