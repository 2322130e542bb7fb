"""Kubernetes label and name rules (datastore.labels)."""

from __future__ import annotations

from typing import Any

import pytest

from datastore.labels import (
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_label_key,
    validate_label_value,
    validate_labels,
)

NAME_CHARS = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character"
)

GOOD_KEYS = [
    "app",
    "a",
    "A_b-c.d",
    "1abc",
    "app.kubernetes.io/name",
    "node-role.kubernetes.io/master",
    "projectcalico.org/namespace",
    "example.com/MyName",
    "x" * 63,
    "a" * 253 + "/n",
    "my-prefix/x",
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_label_keys(key: str) -> None:
    assert validate_label_key(key) is None


BAD_KEYS: list[tuple[Any, str]] = [
    ("", "name part must be non-empty"),
    ("-bad", NAME_CHARS),
    ("bad-", NAME_CHARS),
    ("_bad", NAME_CHARS),
    ("a b", NAME_CHARS),
    ("a=b", NAME_CHARS),
    ("ünï", NAME_CHARS),
    ("x" * 64, "name part must be no more than 63 characters"),
    ("/name", "prefix part must be non-empty"),
    ("prefix/", "name part must be non-empty"),
    ("a/b/c", "a qualified name must consist of"),
    ("Example.com/name", "prefix part a lowercase RFC 1123 subdomain"),
    ("a_b.com/x", "prefix part a lowercase RFC 1123 subdomain"),
    ("a" * 254 + "/n", "prefix part must be no more than 253 characters"),
    ("example.com/-x", NAME_CHARS),
    ("app\n", NAME_CHARS),
    (5, "must be a string"),
]


@pytest.mark.parametrize(("key", "message"), BAD_KEYS)
def test_bad_label_keys(key: Any, message: str) -> None:
    err = validate_label_key(key)
    assert err is not None
    assert message in err


@pytest.mark.parametrize("value", ["", "v", "MyValue", "v1.2_3-x", "12345", "x" * 63])
def test_good_label_values(value: str) -> None:
    assert validate_label_value(value) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-v", "a valid label must be an empty string or consist of alphanumeric characters"),
        ("v-", "must start and end with an alphanumeric character"),
        ("a b", "a valid label must be"),
        ("a/b", "a valid label must be"),
        ("é", "a valid label must be"),
        ("x" * 64, "must be no more than 63 characters"),
        (None, "must be a string"),
        (1, "must be a string"),
    ],
)
def test_bad_label_values(value: Any, message: str) -> None:
    err = validate_label_value(value)
    assert err is not None
    assert message in err


@pytest.mark.parametrize(
    "name", ["default", "a", "my-name", "0abc", "a.b.c", "kube-system.svc", "a" * 253]
)
def test_good_dns1123_subdomains(name: str) -> None:
    assert validate_dns1123_subdomain(name) is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "a lowercase RFC 1123 subdomain"),
        ("Default", "a lowercase RFC 1123 subdomain"),
        ("-a", "a lowercase RFC 1123 subdomain"),
        ("a-", "a lowercase RFC 1123 subdomain"),
        ("a..b", "a lowercase RFC 1123 subdomain"),
        (".a", "a lowercase RFC 1123 subdomain"),
        ("a_b", "a lowercase RFC 1123 subdomain"),
        ("a/b", "a lowercase RFC 1123 subdomain"),
        ("a" * 254, "must be no more than 253 characters"),
        (None, "must be a string"),
    ],
)
def test_bad_dns1123_subdomains(name: Any, message: str) -> None:
    err = validate_dns1123_subdomain(name)
    assert err is not None
    assert message in err


@pytest.mark.parametrize("name", ["default", "kube-system", "a", "0", "a" * 63])
def test_good_dns1123_labels(name: str) -> None:
    assert validate_dns1123_label(name) is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "a lowercase RFC 1123 label"),
        ("a.b", "a lowercase RFC 1123 label"),
        ("A", "a lowercase RFC 1123 label"),
        ("-x", "a lowercase RFC 1123 label"),
        ("x-", "a lowercase RFC 1123 label"),
        ("a" * 64, "must be no more than 63 characters"),
        ("default\n", "a lowercase RFC 1123 label"),
    ],
)
def test_bad_dns1123_labels(name: str, message: str) -> None:
    err = validate_dns1123_label(name)
    assert err is not None
    assert message in err


def test_validate_labels_good() -> None:
    labels = {"app": "web", "app.kubernetes.io/name": "", "tier": "v1.2"}
    assert validate_labels(labels) == []
    assert validate_labels({}) == []


def test_validate_labels_names_field_and_key() -> None:
    errors = validate_labels({"-bad": "x", "ok": "-bad", "fine": "yes"})
    assert len(errors) == 2
    assert errors[0].startswith('metadata.labels: invalid key "-bad": ')
    assert NAME_CHARS in errors[0]
    assert errors[1].startswith('metadata.labels: invalid value "-bad" for key "ok": ')


def test_validate_labels_custom_field_and_both_errors() -> None:
    errors = validate_labels({"a b": "c d"}, field="spec.labelsToApply")
    assert errors == [
        f'spec.labelsToApply: invalid key "a b": {validate_label_key("a b")}',
        f'spec.labelsToApply: invalid value "c d" for key "a b": {validate_label_value("c d")}',
    ]


def test_validate_labels_rejects_non_strings() -> None:
    errors = validate_labels({"port": 80})
    assert errors == ['metadata.labels: invalid value 80 for key "port": must be a string']
    assert validate_labels(["a"]) == [
        "metadata.labels: must be a mapping of label keys to string values"
    ]
