"""Every YAML example in ../shared/seeds, by line range, with what Tortie must do with it.

The examples are cut from the articles' text as they stand (non-breaking spaces included),
so the tests and the demo use exactly what a user would paste.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SEEDS_DIR = Path(os.environ.get("TORTIE_SEEDS_DIR",
                                Path(__file__).resolve().parents[2] / "shared" / "seeds"))

APPLIES = "applies"
REFUSED = "refused"    # a kind Tortie does not store
REJECTED = "rejected"  # malformed or placeholder-holding: an error naming the line or field


@dataclass(frozen=True)
class Example:
    seed: str           # file name prefix, e.g. "001"
    first: int          # 1-based first line
    last: int           # 1-based last line (inclusive)
    outcome: str
    expect: tuple[str, ...] = ()  # for APPLIES: "Kind/name" stored; else: text in the error
    verb: str = "apply"

    def text(self) -> str:
        path = next(SEEDS_DIR.glob(f"{self.seed}_*.txt"))
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        return "".join(lines[self.first - 1:self.last])

    @property
    def id(self) -> str:
        return f"{self.seed}:{self.first}-{self.last}"


EXAMPLES: tuple[Example, ...] = (
    # 001: securing endpoints in Kubernetes
    Example("001", 33, 89, REFUSED, ("Deployment", "not stored by Tortie")),
    Example("001", 93, 121, REFUSED, ("Service", "not stored by Tortie")),
    Example("001", 127, 141, APPLIES, ("k8snetworkpolicy/default/foo-consumer",)),
    Example("001", 145, 159, APPLIES, ("k8snetworkpolicy/default/foo-producer",)),
    # the HostEndpoint's spec is nested under metadata
    Example("001", 181, 189, REJECTED, ("metadata: unknown field 'spec'",
                                        "spec: required field is missing")),
    Example("001", 195, 209, REFUSED, ("Service", "not stored by Tortie")),
    Example("001", 215, 241, APPLIES, ("globalnetworkpolicy/bar-external-consumer",
                                       "globalnetworkpolicy/drop-other-ingress")),
    # 002: calicoctl v1 documents piped to `calicoctl create -f -`
    Example("002", 90, 93, REJECTED, ("metadata.name", "<node name or hostname>"), "create"),
    Example("002", 119, 144, REJECTED, ("<your management CIDR>", "<your etcd IP>/32",
                                        "<your etcd ports>"), "create"),
    Example("002", 168, 179, REJECTED, ("metadata.name", "<list of profile IDs>"), "create"),
    Example("002", 199, 209, REJECTED, ("metadata.name", "<list of profile IDs>"), "create"),
    Example("002", 235, 248, APPLIES, ("globalnetworkpolicy/webserver",), "create"),
    # 003: automatic host endpoints
    Example("003", 34, 69, APPLIES, ("kubecontrollersconfiguration/default",)),
    Example("003", 92, 113, APPLIES, ("hostendpoint/master-auto-hep",)),
    Example("003", 132, 169, APPLIES, ("globalnetworkpolicy/ingress-k8s-masters",)),
    Example("003", 177, 204, APPLIES, ("globalnetworkpolicy/ingress-k8s-workers",)),
    Example("003", 229, 239, APPLIES, ("globalnetworkpolicy/global-access",)),
    Example("003", 277, 289, APPLIES, ("globalnetworkpolicy/internal-access",)),
    # 004: Isle of Cats
    # dmz_pool.yaml: "nodeSelector: type: ..." at the top level is not YAML
    Example("004", 356, 364, REJECTED, ("<stdin>:9:19", "YAML error")),
    Example("004", 382, 389, APPLIES, ("namespace/dmz",)),
    Example("004", 497, 513, REJECTED, ("spec: unknown field 'ports'",)),
    Example("004", 522, 538, REJECTED, ("spec: unknown field 'ports'",)),
    Example("004", 547, 563, REJECTED, ("spec: unknown field 'ports'",)),
    Example("004", 572, 588, REJECTED, ("spec: unknown field 'ports'",)),
    Example("004", 596, 612, REJECTED, ("spec: unknown field 'ports'",)),
    Example("004", 636, 659, APPLIES, ("globalnetworkpolicy/security-operations.quarantine",)),
    Example("004", 668, 691, APPLIES, ("globalnetworkpolicy/security-operations.quarantine",)),
    Example("004", 699, 722, APPLIES, ("globalnetworkpolicy/security-operations.quarantine",)),
)
