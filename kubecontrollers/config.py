"""The KubeControllersConfiguration ``default``, followed from the datastore.

Absent means Calico's defaults (host endpoint auto-creation Disabled, leakGracePeriod 15m,
reconcilerPeriod 5m).  An invalid stored document is logged and the last good one kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from datastore.keys import resource_key, resource_prefix
from datastore.kinds import by_plural
from datastore.model_base import ResourceInvalid
from datastore.model_config import KUBE_CONTROLLERS_CONFIG_NAME, KubeControllersConfiguration
from datastore.syncer import Syncer
from datastore.unsupported import IgnoredFieldLog
from kubecontrollers.controller import Context
from kubecontrollers.settings import leak_grace

log = logging.getLogger("tortie.kc.config")

_KCC = by_plural("kubecontrollersconfigurations")
KEY = resource_key(_KCC.plural, KUBE_CONTROLLERS_CONFIG_NAME)
class ConfigWatcher:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.listeners: list[Callable[[], None]] = []
        self.syncer = Syncer(ctx.store, [resource_prefix(_KCC.plural)], self._update,
                             name="kcc")
        self.invalid = 0
        self.ignored = IgnoredFieldLog("kube-controllers",
                                       frozenset({"KubeControllersConfiguration"}))

    @property
    def synced(self) -> Any:
        return self.syncer.synced

    def _update(self, key: str, value: dict[str, Any] | None) -> None:
        if key != KEY:
            return
        try:
            kcc = KubeControllersConfiguration.from_dict(
                value or {"metadata": {"name": KUBE_CONTROLLERS_CONFIG_NAME}, "spec": {}})
        except ResourceInvalid as e:
            self.invalid += 1
            log.error("invalid KubeControllersConfiguration ignored",
                      extra={"fields": {"error": str(e)}})
            return
        self.ctx.kcc = kcc
        self.ignored.update(key, kcc)
        log.info("configuration", extra={"fields": {
            "autoCreate": kcc.host_endpoint_auto_create(),
            "leakGracePeriod_s": leak_grace(kcc)}})
        for cb in self.listeners:
            cb()

    async def run(self) -> None:
        await self.syncer.run()
