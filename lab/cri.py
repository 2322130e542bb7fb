"""A small CRI v1 ``RuntimeService`` client (the calls kubelet makes for a pod sandbox).

The messages are the public ``runtime.v1`` API of k8s.io/cri-api (``api.proto``), written
here as a protobuf descriptor in Python and turned into message classes at import time:
no generated code and no build step.  Only the messages and fields Tortie uses are
declared; the field numbers are the API's, so anything left out is simply skipped on the
wire.  Usage::

    with RuntimeClient("/run/tortie-lab/L/node1/containerd/containerd.sock") as cri:
        sid = cri.run_pod_sandbox("web", "shop", uid)
        status = cri.pod_sandbox_status(sid)       # .network.ip, .state, ...
        cri.stop_pod_sandbox(sid)
        cri.remove_pod_sandbox(sid)
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "runtime.v1"
DEFAULT_TIMEOUT = 120.0

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64,
}

#: enum name -> [(value name, number)]
ENUMS: dict[str, list[tuple[str, int]]] = {
    "Protocol": [("TCP", 0), ("UDP", 1), ("SCTP", 2)],
    "NamespaceMode": [("POD", 0), ("CONTAINER", 1), ("NODE", 2), ("TARGET", 3)],
    "PodSandboxState": [("SANDBOX_READY", 0), ("SANDBOX_NOTREADY", 1)],
}

#: message name -> [(field name, number, type)]; type is a scalar, an enum or message
#: name, ``repeated T`` or ``map`` (``map<string, string>``, the only map kind CRI uses).
MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "VersionRequest": [("version", 1, "string")],
    "VersionResponse": [("version", 1, "string"), ("runtime_name", 2, "string"),
                        ("runtime_version", 3, "string"),
                        ("runtime_api_version", 4, "string")],
    "DNSConfig": [("servers", 1, "repeated string"), ("searches", 2, "repeated string"),
                  ("options", 3, "repeated string")],
    "PortMapping": [("protocol", 1, "Protocol"), ("container_port", 2, "int32"),
                    ("host_port", 3, "int32"), ("host_ip", 4, "string")],
    "NamespaceOption": [("network", 1, "NamespaceMode"), ("pid", 2, "NamespaceMode"),
                        ("ipc", 3, "NamespaceMode"), ("target_id", 4, "string")],
    "Int64Value": [("value", 1, "int64")],
    "LinuxSandboxSecurityContext": [
        ("namespace_options", 1, "NamespaceOption"), ("run_as_user", 3, "Int64Value"),
        ("readonly_rootfs", 4, "bool"), ("supplemental_groups", 5, "repeated int64"),
        ("privileged", 6, "bool"), ("run_as_group", 8, "Int64Value")],
    "LinuxPodSandboxConfig": [("cgroup_parent", 1, "string"),
                              ("security_context", 2, "LinuxSandboxSecurityContext"),
                              ("sysctls", 3, "map")],
    "PodSandboxMetadata": [("name", 1, "string"), ("uid", 2, "string"),
                           ("namespace", 3, "string"), ("attempt", 4, "uint32")],
    "PodSandboxConfig": [
        ("metadata", 1, "PodSandboxMetadata"), ("hostname", 2, "string"),
        ("log_directory", 3, "string"), ("dns_config", 4, "DNSConfig"),
        ("port_mappings", 5, "repeated PortMapping"), ("labels", 6, "map"),
        ("annotations", 7, "map"), ("linux", 8, "LinuxPodSandboxConfig")],
    "RunPodSandboxRequest": [("config", 1, "PodSandboxConfig"),
                             ("runtime_handler", 2, "string")],
    "RunPodSandboxResponse": [("pod_sandbox_id", 1, "string")],
    "StopPodSandboxRequest": [("pod_sandbox_id", 1, "string")],
    "StopPodSandboxResponse": [],
    "RemovePodSandboxRequest": [("pod_sandbox_id", 1, "string")],
    "RemovePodSandboxResponse": [],
    "PodSandboxStatusRequest": [("pod_sandbox_id", 1, "string"), ("verbose", 2, "bool")],
    "PodIP": [("ip", 1, "string")],
    "PodSandboxNetworkStatus": [("ip", 1, "string"), ("additional_ips", 2, "repeated PodIP")],
    "Namespace": [("options", 2, "NamespaceOption")],
    "LinuxPodSandboxStatus": [("namespaces", 1, "Namespace")],
    "PodSandboxStatus": [
        ("id", 1, "string"), ("metadata", 2, "PodSandboxMetadata"),
        ("state", 3, "PodSandboxState"), ("created_at", 4, "int64"),
        ("network", 5, "PodSandboxNetworkStatus"), ("linux", 6, "LinuxPodSandboxStatus"),
        ("labels", 7, "map"), ("annotations", 8, "map"), ("runtime_handler", 9, "string")],
    "PodSandboxStatusResponse": [("status", 1, "PodSandboxStatus"), ("info", 2, "map"),
                                 ("timestamp", 4, "int64")],
    "PodSandboxStateValue": [("state", 1, "PodSandboxState")],
    "PodSandboxFilter": [("id", 1, "string"), ("state", 2, "PodSandboxStateValue"),
                         ("label_selector", 3, "map")],
    "ListPodSandboxRequest": [("filter", 1, "PodSandboxFilter")],
    "PodSandbox": [
        ("id", 1, "string"), ("metadata", 2, "PodSandboxMetadata"),
        ("state", 3, "PodSandboxState"), ("created_at", 4, "int64"), ("labels", 5, "map"),
        ("annotations", 6, "map"), ("runtime_handler", 7, "string")],
    "ListPodSandboxResponse": [("items", 1, "repeated PodSandbox")],
    "StatusRequest": [("verbose", 1, "bool")],
    "RuntimeCondition": [("type", 1, "string"), ("status", 2, "bool"),
                         ("reason", 3, "string"), ("message", 4, "string")],
    "RuntimeStatus": [("conditions", 1, "repeated RuntimeCondition")],
    "StatusResponse": [("status", 1, "RuntimeStatus"), ("info", 2, "map")],
    "ImageSpec": [("image", 1, "string"), ("annotations", 2, "map")],
    "ImageStatusRequest": [("image", 1, "ImageSpec"), ("verbose", 2, "bool")],
    "Image": [("id", 1, "string"), ("repo_tags", 2, "repeated string"),
              ("repo_digests", 3, "repeated string"), ("size", 4, "uint64")],
    "ImageStatusResponse": [("image", 1, "Image"), ("info", 2, "map")],
}

#: rpc name -> (request message, response message) of the RuntimeService
METHODS: dict[str, tuple[str, str]] = {
    "Version": ("VersionRequest", "VersionResponse"),
    "RunPodSandbox": ("RunPodSandboxRequest", "RunPodSandboxResponse"),
    "StopPodSandbox": ("StopPodSandboxRequest", "StopPodSandboxResponse"),
    "RemovePodSandbox": ("RemovePodSandboxRequest", "RemovePodSandboxResponse"),
    "PodSandboxStatus": ("PodSandboxStatusRequest", "PodSandboxStatusResponse"),
    "ListPodSandbox": ("ListPodSandboxRequest", "ListPodSandboxResponse"),
    "Status": ("StatusRequest", "StatusResponse"),
}
#: ... and of the ImageService (only to see that an image is there: Tortie never pulls)
IMAGE_METHODS: dict[str, tuple[str, str]] = {
    "ImageStatus": ("ImageStatusRequest", "ImageStatusResponse"),
}


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: str) -> None:
    f = msg.field.add(name=name, number=number, label=_F.LABEL_OPTIONAL)
    if kind.startswith("repeated "):
        f.label = _F.LABEL_REPEATED
        kind = kind.removeprefix("repeated ")
    if kind == "map":
        entry_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
        entry = msg.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
        entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
        f.label = _F.LABEL_REPEATED
        f.type = _F.TYPE_MESSAGE
        f.type_name = f".{PACKAGE}.{msg.name}.{entry_name}"
    elif kind in _SCALARS:
        f.type = _SCALARS[kind]
    elif kind in ENUMS:
        f.type = _F.TYPE_ENUM
        f.type_name = f".{PACKAGE}.{kind}"
    elif kind in MESSAGES:
        f.type = _F.TYPE_MESSAGE
        f.type_name = f".{PACKAGE}.{kind}"
    else:
        raise ValueError(f"{msg.name}.{name}: unknown type {kind!r}")


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The (partial) ``runtime.v1`` API as a FileDescriptorProto."""
    fd = descriptor_pb2.FileDescriptorProto(name="tortie/cri/runtime_v1.proto",
                                            package=PACKAGE, syntax="proto3")
    for name, values in ENUMS.items():
        enum = fd.enum_type.add(name=name)
        for vname, number in values:
            enum.value.add(name=vname, number=number)
    for name, fields in MESSAGES.items():
        msg = fd.message_type.add(name=name)
        for fname, number, kind in fields:
            _field(msg, fname, number, kind)
    for service, methods in (("RuntimeService", METHODS), ("ImageService", IMAGE_METHODS)):
        svc = fd.service.add(name=service)
        for rpc, (req, resp) in methods.items():
            svc.method.add(name=rpc, input_type=f".{PACKAGE}.{req}",
                           output_type=f".{PACKAGE}.{resp}")
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(file_descriptor())
#: message name -> class, e.g. ``msg["PodSandboxConfig"](hostname="web")``
msg: dict[str, Any] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
    for name in MESSAGES
}
SANDBOX_READY = 0
SANDBOX_NOTREADY = 1
NAMESPACE_POD = 0


class CRIError(RuntimeError):
    """A CRI call failed: ``.code`` is the gRPC status code."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"CRI {method}: {code.name}: {details}")
        self.code = code
        self.details = details


class RuntimeClient:
    """A blocking client for a CRI runtime's unix socket (one gRPC channel)."""

    def __init__(self, socket: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self._calls = {
            rpc: self._channel.unary_unary(
                f"/{PACKAGE}.{service}/{rpc}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=msg[resp].FromString)
            for service, methods in (("RuntimeService", METHODS),
                                     ("ImageService", IMAGE_METHODS))
            for rpc, (_, resp) in methods.items()
        }

    def __enter__(self) -> RuntimeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def call(self, rpc: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return self._calls[rpc](request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise CRIError(rpc, e.code(), e.details() or "") from None

    # --- the calls ------------------------------------------------------------------------

    def version(self, timeout: float | None = None) -> Any:
        return self.call("Version", msg["VersionRequest"](version="v1"), timeout)

    def status(self) -> dict[str, tuple[bool, str]]:
        """Runtime conditions: type -> (status, reason and message)."""
        resp = self.call("Status", msg["StatusRequest"]())
        return {c.type: (c.status, f"{c.reason}: {c.message}".strip(": "))
                for c in resp.status.conditions}

    def run_pod_sandbox(self, name: str, namespace: str, uid: str, *, attempt: int = 0,
                        labels: dict[str, str] | None = None,
                        annotations: dict[str, str] | None = None,
                        log_directory: str = "", runtime_handler: str = "") -> str:
        """Create and start a pod sandbox the way kubelet does; returns its id."""
        config = sandbox_config(name, namespace, uid, attempt=attempt, labels=labels,
                                annotations=annotations, log_directory=log_directory)
        resp = self.call("RunPodSandbox", msg["RunPodSandboxRequest"](
            config=config, runtime_handler=runtime_handler))
        return str(resp.pod_sandbox_id)

    def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False) -> Any:
        """The PodSandboxStatusResponse (``.status``, and ``.info`` when verbose)."""
        return self.call("PodSandboxStatus", msg["PodSandboxStatusRequest"](
            pod_sandbox_id=sandbox_id, verbose=verbose))

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.call("StopPodSandbox", msg["StopPodSandboxRequest"](pod_sandbox_id=sandbox_id))

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.call("RemovePodSandbox", msg["RemovePodSandboxRequest"](pod_sandbox_id=sandbox_id))

    def list_pod_sandbox(self, *, ready_only: bool = False,
                         labels: dict[str, str] | None = None) -> list[Any]:
        flt = msg["PodSandboxFilter"](label_selector=labels or {})
        if ready_only:
            flt.state.state = SANDBOX_READY
        return list(self.call("ListPodSandbox", msg["ListPodSandboxRequest"](filter=flt)).items)

    def image_present(self, image: str) -> bool:
        """Whether the runtime has ``image`` locally (ImageService.ImageStatus)."""
        resp = self.call("ImageStatus", msg["ImageStatusRequest"](
            image=msg["ImageSpec"](image=image)))
        return bool(resp.HasField("image") and resp.image.id)

    def sandbox_netns(self, sandbox_id: str) -> str:
        """The path of the sandbox's network namespace (from the verbose status)."""
        info = self.pod_sandbox_status(sandbox_id, verbose=True).info
        return netns_from_info(info)


def sandbox_config(name: str, namespace: str, uid: str, *, attempt: int = 0,
                   labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None,
                   log_directory: str = "") -> Any:
    """A PodSandboxConfig as kubelet fills it for a pod on the pod network."""
    all_labels = {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                  "io.kubernetes.pod.uid": uid, **(labels or {})}
    ns_opts = msg["NamespaceOption"](network=NAMESPACE_POD, pid=1, ipc=NAMESPACE_POD)
    return msg["PodSandboxConfig"](
        metadata=msg["PodSandboxMetadata"](name=name, uid=uid, namespace=namespace,
                                           attempt=attempt),
        hostname=name[:63],
        log_directory=log_directory,
        labels=all_labels,
        annotations=annotations or {},
        linux=msg["LinuxPodSandboxConfig"](
            security_context=msg["LinuxSandboxSecurityContext"](namespace_options=ns_opts)),
    )


def netns_from_info(info: Any) -> str:
    """The network namespace path in a verbose PodSandboxStatus ``info`` map (containerd
    puts the sandbox's OCI runtime spec under ``info``)."""
    raw = info.get("info")
    if not raw:
        raise ValueError("the runtime returned no verbose sandbox info")
    data = json.loads(raw)
    for ns in (data.get("runtimeSpec") or {}).get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"])
    raise ValueError("no network namespace path in the sandbox info")
