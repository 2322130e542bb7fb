"""How to reach etcd: endpoints, TLS files, credentials and the request timeout.

Settings come from, in order of precedence: flags (the arguments of :meth:`EtcdConfig.load`),
environment variables, a config file, defaults.  The config file uses calicoctl's format so
an existing calicoctl configuration can be reused as is::

    apiVersion: projectcalico.org/v3
    kind: CalicoAPIConfig          # or TortieConfig
    metadata: {}
    spec:
      datastoreType: etcdv3
      etcdEndpoints: https://10.0.0.1:2379,https://10.0.0.2:2379
      etcdCACertFile: /etc/tortie/ca.pem
      etcdCertFile: /etc/tortie/cert.pem
      etcdKeyFile: /etc/tortie/key.pem
      etcdUsername: tortie          # optional, with etcdPassword
      etcdPassword: secret
      etcdTimeout: 5                # Tortie extension (seconds)

Every problem raises :class:`ConfigError` naming where the bad value came from: the flag,
the environment variable, or the config file path and field.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
    "CONFIG_API_VERSION",
    "CONFIG_KINDS",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_ENDPOINTS",
    "DEFAULT_TIMEOUT",
    "ENV_CA_CERT_FILE",
    "ENV_CERT_FILE",
    "ENV_CONFIG",
    "ENV_ENDPOINTS",
    "ENV_KEY_FILE",
    "ENV_PASSWORD",
    "ENV_TIMEOUT",
    "ENV_USERNAME",
    "ConfigError",
    "EtcdConfig",
    "parse_endpoints",
]

DEFAULT_ENDPOINTS: tuple[str, ...] = ("http://127.0.0.1:2379",)
DEFAULT_TIMEOUT = 5.0
DEFAULT_CONFIG_FILE = "/etc/tortie/tortie.yaml"

ENV_ENDPOINTS = "TORTIE_ETCD_ENDPOINTS"
ENV_CA_CERT_FILE = "TORTIE_ETCD_CA_CERT_FILE"
ENV_CERT_FILE = "TORTIE_ETCD_CERT_FILE"
ENV_KEY_FILE = "TORTIE_ETCD_KEY_FILE"
ENV_USERNAME = "TORTIE_ETCD_USERNAME"
ENV_PASSWORD = "TORTIE_ETCD_PASSWORD"
ENV_TIMEOUT = "TORTIE_ETCD_TIMEOUT"
ENV_CONFIG = "TORTIE_CONFIG"

CONFIG_API_VERSION = "projectcalico.org/v3"
CONFIG_KINDS = ("CalicoAPIConfig", "TortieConfig")

# Setting name -> (flag, env var, config file spec field).  The flag names are the ones the
# command line tools expose; they are only used to say where a bad value came from.
_SOURCES: dict[str, tuple[str, str, str]] = {
    "endpoints": ("--etcd-endpoints", ENV_ENDPOINTS, "etcdEndpoints"),
    "ca_cert_file": ("--etcd-ca-cert-file", ENV_CA_CERT_FILE, "etcdCACertFile"),
    "cert_file": ("--etcd-cert-file", ENV_CERT_FILE, "etcdCertFile"),
    "key_file": ("--etcd-key-file", ENV_KEY_FILE, "etcdKeyFile"),
    "username": ("--etcd-username", ENV_USERNAME, "etcdUsername"),
    "password": ("--etcd-password", ENV_PASSWORD, "etcdPassword"),
    "timeout": ("--etcd-timeout", ENV_TIMEOUT, "etcdTimeout"),
}
_SPEC_FIELDS = {spec_field: name for name, (_, _, spec_field) in _SOURCES.items()}
_SPEC_FIELDS["datastoreType"] = "datastoreType"
# calicoctl fields we know but do not support, with the reason given to the user.
_UNSUPPORTED_SPEC_FIELDS = {
    "etcdCACert": "inline certificates are not supported, use etcdCACertFile",
    "etcdCert": "inline certificates are not supported, use etcdCertFile",
    "etcdKey": "inline keys are not supported, use etcdKeyFile",
    "etcdDiscoverySrv": "DNS SRV discovery is not supported, list etcdEndpoints",
    "kubeconfig": "only the etcdv3 datastore is supported",
    "k8sAPIEndpoint": "only the etcdv3 datastore is supported",
    "k8sAPIToken": "only the etcdv3 datastore is supported",
    "k8sCertFile": "only the etcdv3 datastore is supported",
    "k8sKeyFile": "only the etcdv3 datastore is supported",
    "k8sCAFile": "only the etcdv3 datastore is supported",
    "k8sInsecureSkipTLSVerify": "only the etcdv3 datastore is supported",
}
_TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec")


class ConfigError(ValueError):
    """The etcd configuration is invalid; the message says what and where."""


def parse_endpoints(value: str | list[Any] | tuple[Any, ...], source: str) -> tuple[str, ...]:
    """Split and validate a comma separated endpoint list (or a list of URLs).

    ``source`` names where the value came from and is used in error messages.
    """
    raw: list[Any] = value.split(",") if isinstance(value, str) else list(value)
    endpoints: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise ConfigError(f"{source}: etcd endpoint must be a string, got {item!r}")
        url = item.strip()
        if not url:
            continue
        endpoints.append(_check_endpoint(url, source))
    if not endpoints:
        raise ConfigError(f"{source}: no etcd endpoints given")
    return tuple(endpoints)


def _check_endpoint(url: str, source: str) -> str:
    prefix = f"{source}: invalid etcd endpoint {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{prefix}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"{prefix}: scheme must be http or https, e.g. http://127.0.0.1:2379"
        )
    if not parts.hostname or port is None:
        raise ConfigError(f"{prefix}: needs host:port, e.g. {parts.scheme}://127.0.0.1:2379")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{prefix}: only scheme://host:port is allowed")
    return f"{parts.scheme}://{parts.netloc}"


def _check_timeout(value: object, source: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{source}: timeout must be a number of seconds, got {value!r}")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(
                f"{source}: timeout must be a number of seconds, got {value!r}"
            ) from None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        raise ConfigError(f"{source}: timeout must be a number of seconds, got {value!r}")
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{source}: timeout must be a positive number of seconds, got {value!r}")
    return number


@dataclass(frozen=True)
class EtcdConfig:
    """Connection settings for etcd.

    ``timeout`` (seconds) bounds every request and every connection attempt.
    """

    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    ca_cert_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        # Shape checks that hold however the config was built; load() checks the same with
        # better source names first, plus that the TLS files exist.
        if isinstance(self.endpoints, str):
            raise ConfigError("EtcdConfig.endpoints: must be a tuple of URLs, not a string")
        object.__setattr__(
            self, "endpoints", parse_endpoints(tuple(self.endpoints), "EtcdConfig.endpoints")
        )
        object.__setattr__(self, "timeout", _check_timeout(self.timeout, "EtcdConfig.timeout"))
        _check_pairs(
            self.cert_file, self.key_file, self.username, self.password,
            "EtcdConfig.cert_file", "EtcdConfig.key_file",
            "EtcdConfig.username", "EtcdConfig.password",
        )

    @property
    def ports(self) -> tuple[int, ...]:
        """The TCP ports of the endpoints (sorted, no duplicates)."""
        return tuple(sorted({p for e in self.endpoints if (p := urlsplit(e).port)}))

    def to_env(self) -> dict[str, str]:
        """The ``TORTIE_ETCD_*`` environment variables that :meth:`load` reads back into this
        configuration (for a child process: a daemon, the CLI)."""
        values = {ENV_ENDPOINTS: ",".join(self.endpoints), ENV_CA_CERT_FILE: self.ca_cert_file,
                  ENV_CERT_FILE: self.cert_file, ENV_KEY_FILE: self.key_file,
                  ENV_USERNAME: self.username, ENV_PASSWORD: self.password,
                  ENV_TIMEOUT: None if self.timeout == DEFAULT_TIMEOUT else repr(self.timeout)}
        return {k: v for k, v in values.items() if v}

    @classmethod
    def load(
        cls,
        *,
        endpoints: str | None = None,
        ca_cert_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        config_file: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] = os.environ,
    ) -> EtcdConfig:
        """Build the configuration: flags (arguments) > env vars > config file > defaults.

        The config file is ``config_file`` (must exist), else ``$TORTIE_CONFIG`` (skipped
        if it does not exist, as calicoctl does), else ``/etc/tortie/tortie.yaml`` if that
        exists.  Empty environment variables count as unset.  Raises :class:`ConfigError`
        naming the source of any bad value.
        """
        flags: dict[str, object] = {
            "endpoints": endpoints,
            "ca_cert_file": ca_cert_file,
            "cert_file": cert_file,
            "key_file": key_file,
            "username": username,
            "password": password,
            "timeout": timeout,
        }
        file_values, file_path = _read_config_file(config_file, env)

        values: dict[str, object] = {}
        sources: dict[str, str] = {}
        for name, (flag, env_var, spec_field) in _SOURCES.items():
            if flags[name] is not None:
                values[name], sources[name] = flags[name], f"flag {flag}"
            elif env.get(env_var):
                values[name], sources[name] = env[env_var], f"env {env_var}"
            elif name in file_values:
                values[name] = file_values[name]
                sources[name] = f"config file {file_path}: spec.{spec_field}"

        ep_value = values.get("endpoints")
        if ep_value is None:
            eps = DEFAULT_ENDPOINTS
        elif isinstance(ep_value, str | list | tuple):
            eps = parse_endpoints(ep_value, sources["endpoints"])
        else:
            raise ConfigError(
                f"{sources['endpoints']}: must be a comma separated list of URLs, "
                f"got {ep_value!r}"
            )
        tmo = (
            _check_timeout(values["timeout"], sources["timeout"])
            if "timeout" in values
            else DEFAULT_TIMEOUT
        )
        strs: dict[str, str | None] = {}
        for name in ("ca_cert_file", "cert_file", "key_file", "username", "password"):
            value = values.get(name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{sources[name]}: must be a string, got {value!r}")
            strs[name] = value or None

        def src(name: str) -> str:
            return sources.get(name, f"flag {_SOURCES[name][0]}")

        _check_pairs(
            strs["cert_file"], strs["key_file"], strs["username"], strs["password"],
            src("cert_file"), src("key_file"), src("username"), src("password"),
        )
        if any(e.startswith("https://") for e in eps):
            for name in ("ca_cert_file", "cert_file", "key_file"):
                path = strs[name]
                if path is not None and not Path(path).is_file():
                    raise ConfigError(
                        f"{sources[name]}: file {path!r} does not exist or is not a file "
                        f"(needed for https endpoint {_first_https(eps)})"
                    )
        return cls(
            endpoints=eps,
            ca_cert_file=strs["ca_cert_file"],
            cert_file=strs["cert_file"],
            key_file=strs["key_file"],
            username=strs["username"],
            password=strs["password"],
            timeout=tmo,
        )


def _first_https(endpoints: tuple[str, ...]) -> str:
    return next(e for e in endpoints if e.startswith("https://"))


def _check_pairs(
    cert_file: str | None,
    key_file: str | None,
    username: str | None,
    password: str | None,
    cert_src: str,
    key_src: str,
    user_src: str,
    pass_src: str,
) -> None:
    if cert_file and not key_file:
        raise ConfigError(f"{cert_src}: client certificate given without a key (set {key_src})")
    if key_file and not cert_file:
        raise ConfigError(f"{key_src}: client key given without a certificate (set {cert_src})")
    if username and password is None:
        raise ConfigError(f"{user_src}: etcd username given without a password (set {pass_src})")
    if password and not username:
        raise ConfigError(f"{pass_src}: etcd password given without a username (set {user_src})")


def _read_config_file(
    config_file: str | None, env: Mapping[str, str]
) -> tuple[dict[str, object], str | None]:
    """Return (setting name -> value, path) from the config file, or ({}, None) if none."""
    if config_file is not None:
        # Named on the command line: a missing file is an error.
        path, origin = config_file, "flag --config"
    elif env.get(ENV_CONFIG):
        # Like calicoctl, a config file that does not exist is skipped, so
        # TORTIE_CONFIG=/nonexistent means "no config file".
        path, origin = env[ENV_CONFIG], f"env {ENV_CONFIG}"
        if not Path(path).exists():
            return {}, None
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        path, origin = DEFAULT_CONFIG_FILE, "default config file"
    else:
        return {}, None

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{origin}: cannot read config file {path!r}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: invalid YAML: {e}") from None
    where = f"config file {path}"
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping with apiVersion, kind and spec")
    for key in doc:
        if key not in _TOP_LEVEL_FIELDS:
            raise ConfigError(
                f"{where}: unknown field {key!r} (allowed: {', '.join(_TOP_LEVEL_FIELDS)})"
            )
    if doc.get("apiVersion") != CONFIG_API_VERSION:
        raise ConfigError(
            f"{where}: apiVersion must be {CONFIG_API_VERSION!r}, got {doc.get('apiVersion')!r}"
        )
    if doc.get("kind") not in CONFIG_KINDS:
        raise ConfigError(
            f"{where}: kind must be one of {', '.join(CONFIG_KINDS)}, got {doc.get('kind')!r}"
        )
    spec = doc.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: spec must be a mapping, got {type(spec).__name__}")

    values: dict[str, object] = {}
    for key, value in spec.items():
        if key in _UNSUPPORTED_SPEC_FIELDS:
            raise ConfigError(
                f"{where}: spec.{key} is not supported: {_UNSUPPORTED_SPEC_FIELDS[key]}"
            )
        if key not in _SPEC_FIELDS:
            known = ", ".join(sorted(_SPEC_FIELDS))
            raise ConfigError(f"{where}: unknown field spec.{key} (known fields: {known})")
        if key == "datastoreType":
            if value != "etcdv3":
                raise ConfigError(
                    f"{where}: spec.datastoreType must be 'etcdv3', got {value!r} "
                    "(only the etcd datastore is supported)"
                )
            continue
        if value is None or value == "":
            continue
        values[_SPEC_FIELDS[key]] = value
    return values, path


def add_etcd_arguments(parser: argparse.ArgumentParser) -> None:
    """The etcd flags every Tortie daemon takes (read back with :func:`from_arguments`)."""
    parser.add_argument("--etcd-endpoints", help="etcd URLs, comma separated "
                        "[env TORTIE_ETCD_ENDPOINTS]")
    parser.add_argument("--etcd-ca-cert-file", help="CA bundle for https endpoints")
    parser.add_argument("--etcd-cert-file", help="client certificate")
    parser.add_argument("--etcd-key-file", help="client key")
    parser.add_argument("--etcd-username", help="etcd user")
    parser.add_argument("--etcd-password", help="etcd password")
    parser.add_argument("--etcd-timeout", type=float,
                        help="seconds to wait for etcd (default 5)")
    parser.add_argument("-c", "--config", dest="config_file",
                        help="config file (calicoctl's CalicoAPIConfig format) "
                             "[env TORTIE_CONFIG]")


def from_arguments(args: argparse.Namespace) -> EtcdConfig:
    """The EtcdConfig of flags added by :func:`add_etcd_arguments` (raises ConfigError)."""
    return EtcdConfig.load(
        endpoints=args.etcd_endpoints, ca_cert_file=args.etcd_ca_cert_file,
        cert_file=args.etcd_cert_file, key_file=args.etcd_key_file,
        username=args.etcd_username, password=args.etcd_password,
        config_file=args.config_file, timeout=args.etcd_timeout)
