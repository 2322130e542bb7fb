"""EtcdConfig loading and validation: files, environment, flags, precedence, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore import etcd_config
from datastore.etcd_config import ConfigError, EtcdConfig

pytestmark = pytest.mark.usefixtures("no_default_config_file")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def calico_file(directory: Path, spec: str, kind: str = "CalicoAPIConfig") -> str:
    return write(
        directory / "calicoctl.cfg",
        f"apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{}}\nspec:\n{spec}",
    )


def cert_files(directory: Path) -> tuple[str, str, str]:
    """Three (dummy) files standing in for CA, cert and key."""
    return (
        write(directory / "ca.pem", "ca"),
        write(directory / "cert.pem", "cert"),
        write(directory / "key.pem", "key"),
    )


# -- loading and precedence -----------------------------------------------------------------


def test_defaults() -> None:
    cfg = EtcdConfig.load(env={})
    assert cfg == EtcdConfig()
    assert cfg.endpoints == ("http://127.0.0.1:2379",)
    assert cfg.timeout == 5.0
    assert cfg.ca_cert_file is cfg.cert_file is cfg.key_file is None
    assert cfg.username is cfg.password is None


def test_calicoctl_config_file(scratch_dir: Path) -> None:
    ca, cert, key = cert_files(scratch_dir)
    path = calico_file(
        scratch_dir,
        "  datastoreType: etcdv3\n"
        '  etcdEndpoints: "https://10.0.0.1:2379, https://10.0.0.2:2379"\n'
        f"  etcdCACertFile: {ca}\n"
        f"  etcdCertFile: {cert}\n"
        f"  etcdKeyFile: {key}\n"
        "  etcdUsername: calico\n"
        "  etcdPassword: s3cret\n",
    )
    cfg = EtcdConfig.load(config_file=path, env={})
    assert cfg == EtcdConfig(
        endpoints=("https://10.0.0.1:2379", "https://10.0.0.2:2379"),
        ca_cert_file=ca,
        cert_file=cert,
        key_file=key,
        username="calico",
        password="s3cret",
    )
    assert "s3cret" not in repr(cfg)


def test_tortie_config_kind_and_timeout(scratch_dir: Path) -> None:
    path = calico_file(
        scratch_dir, "  etcdEndpoints: http://127.0.0.1:2999\n  etcdTimeout: 2.5\n",
        kind="TortieConfig",
    )
    cfg = EtcdConfig.load(config_file=path, env={})
    assert cfg.endpoints == ("http://127.0.0.1:2999",)
    assert cfg.timeout == 2.5


def test_config_file_location(scratch_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (scratch_dir / "a").mkdir()
    (scratch_dir / "b").mkdir()
    (scratch_dir / "c").mkdir()
    from_arg = calico_file(scratch_dir / "a", "  etcdEndpoints: http://127.0.0.1:1001\n")
    from_env = calico_file(scratch_dir / "b", "  etcdEndpoints: http://127.0.0.1:1002\n")
    default = calico_file(scratch_dir / "c", "  etcdEndpoints: http://127.0.0.1:1003\n")
    env = {"TORTIE_CONFIG": from_env}
    assert EtcdConfig.load(config_file=from_arg, env=env).endpoints[0].endswith(":1001")
    assert EtcdConfig.load(env=env).endpoints[0].endswith(":1002")
    assert EtcdConfig.load(env={}).endpoints == etcd_config.DEFAULT_ENDPOINTS
    monkeypatch.setattr(etcd_config, "DEFAULT_CONFIG_FILE", default)
    assert EtcdConfig.load(env={}).endpoints[0].endswith(":1003")
    # TORTIE_CONFIG naming a missing file means "no file" (as with calicoctl)...
    missing = str(scratch_dir / "missing.yaml")
    assert EtcdConfig.load(env={"TORTIE_CONFIG": missing}).endpoints == (
        etcd_config.DEFAULT_ENDPOINTS
    )
    # ...but a file named by the flag must exist.
    with pytest.raises(ConfigError, match=r"flag --config: cannot read config file .*missing"):
        EtcdConfig.load(config_file=missing, env={})


def test_precedence_flags_over_env_over_file(scratch_dir: Path) -> None:
    ca, cert, key = cert_files(scratch_dir)
    ca2 = write(scratch_dir / "ca2.pem", "ca2")
    path = calico_file(
        scratch_dir,
        "  etcdEndpoints: https://127.0.0.1:3001\n"
        f"  etcdCACertFile: {ca}\n"
        f"  etcdCertFile: {cert}\n"
        f"  etcdKeyFile: {key}\n"
        "  etcdUsername: file-user\n"
        "  etcdPassword: file-pw\n"
        "  etcdTimeout: 7\n",
    )
    env = {
        "TORTIE_CONFIG": path,
        "TORTIE_ETCD_ENDPOINTS": "https://127.0.0.1:3002,https://127.0.0.1:3003",
        "TORTIE_ETCD_CA_CERT_FILE": ca2,
        "TORTIE_ETCD_USERNAME": "env-user",
        "TORTIE_ETCD_PASSWORD": "env-pw",
        "TORTIE_ETCD_TIMEOUT": "3",
        "TORTIE_ETCD_KEY_FILE": "",  # empty: unset
    }
    # env over file, field by field.
    cfg = EtcdConfig.load(env=env)
    assert cfg.endpoints == ("https://127.0.0.1:3002", "https://127.0.0.1:3003")
    assert cfg.ca_cert_file == ca2
    assert (cfg.cert_file, cfg.key_file) == (cert, key)  # from the file
    assert (cfg.username, cfg.password) == ("env-user", "env-pw")
    assert cfg.timeout == 3.0
    # flags over env.
    cfg = EtcdConfig.load(
        endpoints="https://127.0.0.1:3004", ca_cert_file=ca, username="flag-user",
        password="flag-pw", timeout=1.5, env=env,
    )
    assert cfg.endpoints == ("https://127.0.0.1:3004",)
    assert cfg.ca_cert_file == ca
    assert (cfg.username, cfg.password) == ("flag-user", "flag-pw")
    assert cfg.timeout == 1.5
    # file only.
    cfg = EtcdConfig.load(env={"TORTIE_CONFIG": path})
    assert cfg.endpoints == ("https://127.0.0.1:3001",)
    assert (cfg.username, cfg.timeout) == ("file-user", 7.0)


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://127.0.0.1:2379", "scheme must be http or https"),
        ("127.0.0.1:2379", "scheme must be http or https"),
        ("http://127.0.0.1", "needs host:port"),
        ("http://:2379", "needs host:port"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://127.0.0.1:2379/v3", "only scheme://host:port"),
    ],
)
def test_bad_endpoint_urls(url: str, problem: str, scratch_dir: Path) -> None:
    with pytest.raises(ConfigError, match=rf"flag --etcd-endpoints: invalid.*{problem}"):
        EtcdConfig.load(endpoints=f"http://127.0.0.1:2379,{url}", env={})
    with pytest.raises(ConfigError, match=f"env TORTIE_ETCD_ENDPOINTS: .*{problem}"):
        EtcdConfig.load(env={"TORTIE_ETCD_ENDPOINTS": url})
    path = calico_file(scratch_dir, f"  etcdEndpoints: {url}\n")
    with pytest.raises(ConfigError, match=f"{path}: spec.etcdEndpoints: .*{problem}"):
        EtcdConfig.load(config_file=path, env={})


def test_no_endpoints() -> None:
    with pytest.raises(ConfigError, match="flag --etcd-endpoints: no etcd endpoints"):
        EtcdConfig.load(endpoints=" , ", env={})


def test_cert_without_key(scratch_dir: Path) -> None:
    _, cert, key = cert_files(scratch_dir)
    with pytest.raises(
        ConfigError,
        match="env TORTIE_ETCD_CERT_FILE: client certificate given without a key "
        r"\(set flag --etcd-key-file\)",
    ):
        EtcdConfig.load(env={"TORTIE_ETCD_CERT_FILE": cert})
    with pytest.raises(ConfigError, match="flag --etcd-key-file: client key given without a"):
        EtcdConfig.load(key_file=key, env={})
    path = calico_file(scratch_dir, f"  etcdCertFile: {cert}\n")
    with pytest.raises(ConfigError, match=f"{path}: spec.etcdCertFile: client certificate"):
        EtcdConfig.load(config_file=path, env={})


def test_username_without_password() -> None:
    with pytest.raises(ConfigError, match=r"env TORTIE_ETCD_USERNAME: .* without a password"):
        EtcdConfig.load(env={"TORTIE_ETCD_USERNAME": "u"})


def test_https_with_missing_files(scratch_dir: Path) -> None:
    ca, cert, key = cert_files(scratch_dir)
    missing = str(scratch_dir / "nope.pem")
    with pytest.raises(
        ConfigError,
        match=f"flag --etcd-ca-cert-file: file '{missing}' does not exist.*"
        "https endpoint https://127.0.0.1:2379",
    ):
        EtcdConfig.load(endpoints="https://127.0.0.1:2379", ca_cert_file=missing, env={})
    with pytest.raises(ConfigError, match=r"env TORTIE_ETCD_KEY_FILE: file .* does not exist"):
        EtcdConfig.load(
            endpoints="https://127.0.0.1:2379", cert_file=cert,
            env={"TORTIE_ETCD_KEY_FILE": missing},
        )
    path = calico_file(
        scratch_dir,
        f"  etcdEndpoints: https://127.0.0.1:2379\n  etcdCACertFile: {ca}\n"
        f"  etcdCertFile: {missing}\n  etcdKeyFile: {key}\n",
    )
    with pytest.raises(ConfigError, match=f"{path}: spec.etcdCertFile: file .* does not exist"):
        EtcdConfig.load(config_file=path, env={})
    # Only checked for https endpoints.
    assert EtcdConfig.load(ca_cert_file=missing, env={}).ca_cert_file == missing


def test_config_file_errors(scratch_dir: Path) -> None:
    def load_spec(spec: str, **kw: str) -> EtcdConfig:
        return EtcdConfig.load(config_file=calico_file(scratch_dir, spec, **kw), env={})

    path = str(scratch_dir / "calicoctl.cfg")
    with pytest.raises(ConfigError, match=f"{path}: unknown field spec.etcdEndpoint "):
        load_spec("  etcdEndpoint: http://127.0.0.1:2379\n")
    with pytest.raises(ConfigError, match=f"{path}: spec.datastoreType must be 'etcdv3', got "
                       "'kubernetes'"):
        load_spec("  datastoreType: kubernetes\n")
    with pytest.raises(ConfigError, match=f"{path}: spec.etcdCACert is not supported: inline"):
        load_spec("  etcdCACert: '-----BEGIN CERTIFICATE-----'\n")
    with pytest.raises(ConfigError, match=f"{path}: kind must be one of"):
        load_spec("  {}\n", kind="Pod")
    with pytest.raises(ConfigError, match=f"{path}: spec.etcdTimeout: timeout must be a number"):
        load_spec("  etcdTimeout: soon\n")
    with pytest.raises(ConfigError, match=f"{path}: spec.etcdUsername: must be a string"):
        load_spec("  etcdUsername: [a]\n  etcdPassword: x\n")
    bad = write(scratch_dir / "bad.yaml", "apiVersion: projectcalico.org/v3\nspec: [\n")
    with pytest.raises(ConfigError, match=f"config file {bad}: invalid YAML"):
        EtcdConfig.load(config_file=bad, env={})
    old = write(scratch_dir / "v1.yaml", "apiVersion: v1\nkind: calicoApiConfig\nspec: {}\n")
    with pytest.raises(ConfigError, match=f"{old}: apiVersion must be 'projectcalico.org/v3'"):
        EtcdConfig.load(config_file=old, env={})
    extra = write(
        scratch_dir / "extra.yaml",
        "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nstatus: {}\n",
    )
    with pytest.raises(ConfigError, match=f"{extra}: unknown field 'status'"):
        EtcdConfig.load(config_file=extra, env={})
    empty = write(scratch_dir / "empty.yaml", "")
    with pytest.raises(ConfigError, match=f"{empty}: expected a mapping"):
        EtcdConfig.load(config_file=empty, env={})


@pytest.mark.parametrize("value", ["abc", "", "-1", "0", "nan", "inf"])
def test_bad_timeouts(value: str) -> None:
    if value:  # an empty env var is unset
        with pytest.raises(ConfigError, match=f"env TORTIE_ETCD_TIMEOUT: timeout must be a "
                           f"(positive )?number of seconds, got '{value}'"):
            EtcdConfig.load(env={"TORTIE_ETCD_TIMEOUT": value})
    else:
        assert EtcdConfig.load(env={"TORTIE_ETCD_TIMEOUT": value}).timeout == 5.0
    with pytest.raises(ConfigError, match="flag --etcd-timeout: timeout must be"):
        EtcdConfig.load(timeout=-1.0, env={})


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"EtcdConfig\.endpoints: invalid etcd endpoint"):
        EtcdConfig(endpoints=("localhost:2379",))
    with pytest.raises(ConfigError, match="must be a tuple"):
        EtcdConfig(endpoints="http://127.0.0.1:2379")
    with pytest.raises(ConfigError, match=r"EtcdConfig\.timeout"):
        EtcdConfig(timeout=0)
    with pytest.raises(ConfigError, match=r"EtcdConfig\.cert_file: client certificate"):
        EtcdConfig(cert_file="/x")
    assert EtcdConfig(endpoints=["http://a:1/"]).endpoints == ("http://a:1",)
