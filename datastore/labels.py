"""Kubernetes label and name rules (the checks of apimachinery's validation package).

Every function returns an error message in Kubernetes' wording, or ``None`` when the input
is valid; nothing here raises. The resource models turn the messages into field errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Name part of a qualified name, and a label value (which may also be empty).
_QUALIFIED_NAME_FMT = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_RE = re.compile(_QUALIFIED_NAME_FMT)
_QUALIFIED_NAME_MAX = 63
_LABEL_VALUE_FMT = rf"({_QUALIFIED_NAME_FMT})?"
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT)
_LABEL_VALUE_MAX = 63

_DNS1123_LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_LABEL_MAX = 63
_DNS1123_SUBDOMAIN_FMT = rf"{_DNS1123_LABEL_FMT}(\.{_DNS1123_LABEL_FMT})*"
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1123_SUBDOMAIN_MAX = 253

_NAME_CHARS_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character"
)
_QUALIFIED_NAME_MSG = (
    f"name part {_NAME_CHARS_MSG} (e.g. 'MyName', or 'my.name', or '123-abc', "
    f"regex used for validation is '{_QUALIFIED_NAME_FMT}')"
)
_QUALIFIED_NAME_SHAPE_MSG = (
    f"a qualified name {_NAME_CHARS_MSG} (e.g. 'MyName', or 'my.name', or '123-abc', "
    f"regex used for validation is '{_QUALIFIED_NAME_FMT}') with an optional DNS subdomain "
    "prefix and '/' (e.g. 'example.com/MyName')"
)
_LABEL_VALUE_MSG = (
    f"a valid label must be an empty string or {_NAME_CHARS_MSG.removeprefix('must ')} "
    f"(e.g. 'MyValue', or 'my_value', or '12345', "
    f"regex used for validation is '{_LABEL_VALUE_FMT}')"
)
_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc', "
    f"regex used for validation is '{_DNS1123_LABEL_FMT}')"
)
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    f"regex used for validation is '{_DNS1123_SUBDOMAIN_FMT}')"
)


def _too_long(limit: int) -> str:
    return f"must be no more than {limit} characters"


def _join(errors: list[str]) -> str | None:
    return "; ".join(errors) if errors else None


def _subdomain_errors(name: str) -> list[str]:
    errors: list[str] = []
    if len(name) > _DNS1123_SUBDOMAIN_MAX:
        errors.append(_too_long(_DNS1123_SUBDOMAIN_MAX))
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(name):
        errors.append(_DNS1123_SUBDOMAIN_MSG)
    return errors


def validate_dns1123_subdomain(name: str) -> str | None:
    """Check a DNS-1123 subdomain (most resource names): ``None`` if valid, else why not."""
    if not isinstance(name, str):
        return "must be a string"
    return _join(_subdomain_errors(name))


def validate_dns1123_label(name: str) -> str | None:
    """Check a DNS-1123 label (namespaces, some names): ``None`` if valid, else why not."""
    if not isinstance(name, str):
        return "must be a string"
    errors: list[str] = []
    if len(name) > _DNS1123_LABEL_MAX:
        errors.append(_too_long(_DNS1123_LABEL_MAX))
    if not _DNS1123_LABEL_RE.fullmatch(name):
        errors.append(_DNS1123_LABEL_MSG)
    return _join(errors)


def validate_label_key(key: str) -> str | None:
    """Check a label key (a Kubernetes qualified name): ``None`` if valid, else why not.

    A key is ``[prefix/]name``: the optional prefix a DNS-1123 subdomain, the name at most
    63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric.
    """
    if not isinstance(key, str):
        return "must be a string"
    parts = key.split("/")
    if len(parts) == 1:
        name = key
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return "prefix part must be non-empty"
        prefix_errors = _subdomain_errors(prefix)
        if prefix_errors:
            return _join([f"prefix part {msg}" for msg in prefix_errors])
    else:
        return _QUALIFIED_NAME_SHAPE_MSG
    if not name:
        return "name part must be non-empty"
    errors: list[str] = []
    if len(name) > _QUALIFIED_NAME_MAX:
        errors.append(f"name part {_too_long(_QUALIFIED_NAME_MAX)}")
    if not _QUALIFIED_NAME_RE.fullmatch(name):
        errors.append(_QUALIFIED_NAME_MSG)
    return _join(errors)


def validate_label_value(value: str) -> str | None:
    """Check a label value (empty, or up to 63 name characters): ``None`` if valid."""
    if not isinstance(value, str):
        return "must be a string"
    errors: list[str] = []
    if len(value) > _LABEL_VALUE_MAX:
        errors.append(_too_long(_LABEL_VALUE_MAX))
    if not _LABEL_VALUE_RE.fullmatch(value):
        errors.append(_LABEL_VALUE_MSG)
    return _join(errors)


def validate_labels(labels: Mapping[str, str], field: str = "metadata.labels") -> list[str]:
    """Every problem with a label map, each naming ``field`` and the key concerned."""
    if not isinstance(labels, Mapping):
        return [f"{field}: must be a mapping of label keys to string values"]
    errors: list[str] = []
    for key, value in labels.items():
        key_err = validate_label_key(key)
        if key_err:
            errors.append(f"{field}: invalid key {_quote(key)}: {key_err}")
        value_err = validate_label_value(value)
        if value_err:
            errors.append(
                f"{field}: invalid value {_quote(value)} for key {_quote(key)}: {value_err}"
            )
    return errors


def _quote(value: object) -> str:
    """Double-quote strings for messages (as Go's %q would); show other types as they are."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
