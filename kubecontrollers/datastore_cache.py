"""A datastore kind followed with :class:`datastore.syncer.Syncer`, shared by controllers:
values by resource name (cluster-scoped kinds), plus change listeners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datastore import keys
from datastore.store import Store
from datastore.syncer import Syncer

Listener = Callable[[str, dict[str, Any] | None], None]


class DatastoreCache:
    def __init__(self, store: Store, plural: str) -> None:
        self.plural = plural
        self.items: dict[str, dict[str, Any]] = {}
        self.listeners: list[Listener] = []
        self.synced_listeners: list[Callable[[], None]] = []
        self.syncer = Syncer(store, [keys.resource_prefix(plural)], self._update,
                             self._synced, name=f"kc-{plural}")

    @property
    def synced(self) -> Any:
        return self.syncer.synced

    def _update(self, key: str, value: dict[str, Any] | None) -> None:
        _, _, name = keys.parse_resource_key(key)
        if value is None:
            self.items.pop(name, None)
        else:
            self.items[name] = value
        for cb in self.listeners:
            cb(name, value)

    def _synced(self) -> None:
        for cb in self.synced_listeners:
            cb()

    async def run(self) -> None:
        await self.syncer.run()
