"""Selector arithmetic for the policy calculation: conjunction, label-key prefixing, scoping.

Calico evaluates every selector against an endpoint's labels *plus* the labels its profiles
apply: the namespace profile ``kns.<ns>`` gives ``pcns.<key>`` labels, the service-account
profile ``ksa.<ns>.<sa>`` gives ``pcsa.<key>`` labels. A ``namespaceSelector`` is therefore the
same selector with every key prefixed by ``pcns.``, a service-account selector the same with
``pcsa.``. Everything here works on canonical selector text (``str(parse(text))``), so two
spellings of one selector give one string -- and one IP set.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from datastore.selector import parse

LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
LABEL_NAME = "projectcalico.org/name"
NAMESPACE_PREFIX = "pcns."
SERVICE_ACCOUNT_PREFIX = "pcsa."
ALL = "all()"

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")


@functools.lru_cache(maxsize=1 << 14)
def canonical(text: str | None) -> str:
    """The canonical form of a selector; empty or missing means ``all()``."""
    if not text or not text.strip():
        return ALL
    return str(parse(text))


def quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


def all_of(parts: Iterable[str | None]) -> str:
    """The conjunction of selectors (``all()`` and empty parts drop out), canonical."""
    return _all_of(tuple(p for p in parts if p))


@functools.lru_cache(maxsize=1 << 14)
def _all_of(parts: tuple[str, ...]) -> str:
    texts = [canonical(p) for p in parts]
    texts = [t for t in texts if t != ALL]
    if not texts:
        return ALL
    if len(texts) == 1:
        return texts[0]
    return canonical(" && ".join(f"({t})" for t in dict.fromkeys(texts)))


@functools.lru_cache(maxsize=1 << 12)
def prefixed(text: str, prefix: str) -> str:
    """The selector with every label key prefixed (``a == "b"`` -> ``pcns.a == "b"``).

    Works on the canonical text, where a key is the first word of an operand (or the argument
    of ``has()``) and every value is quoted."""
    canon = canonical(text)
    out: list[str] = []
    i, n = 0, len(canon)
    operand = True  # at a position where an operand (and so a key) may start
    while i < n:
        c = canon[i]
        if c in " \t":
            out.append(c)
            i += 1
        elif c in "\"'":
            end = canon.index(c, i + 1)
            out.append(canon[i:end + 1])
            i = end + 1
            operand = False
        elif canon.startswith(("&&", "||"), i):
            out.append(canon[i:i + 2])
            i += 2
            operand = True
        elif canon.startswith(("!=", "=="), i):
            out.append(canon[i:i + 2])
            i += 2
            operand = False
        elif c in "(!":
            out.append(c)
            i += 1
            operand = True
        elif c in "){},":
            out.append(c)
            i += 1
        elif c in _KEY_CHARS:
            j = i
            while j < n and canon[j] in _KEY_CHARS:
                j += 1
            word = canon[i:j]
            if j < n and canon[j] == "(" and word in ("has", "all", "global"):
                if word == "has":
                    close = canon.index(")", j)
                    out.append(f"has({prefix}{canon[j + 1:close]})")
                    i = close + 1
                else:
                    out.append(f"{word}()")
                    i = j + 2
                operand = False
            else:
                out.append(prefix + word if operand else word)
                operand = False
                i = j
        else:  # pragma: no cover - canonical text has no other characters
            raise ValueError(f"unexpected {c!r} in selector {canon!r}")
    return canonical("".join(out))


@functools.lru_cache(maxsize=1 << 12)
def namespace_selector(text: str) -> str:
    """A ``namespaceSelector`` as a selector over endpoint labels.

    It only ever selects namespaced things (``has(projectcalico.org/namespace)``); ``global()``
    selects the non-namespaced ones (host endpoints, global network sets) instead."""
    canon = canonical(text)
    if canon == "global()":
        return f"!has({LABEL_NAMESPACE})"
    return all_of([f"has({LABEL_NAMESPACE})", prefixed(canon, NAMESPACE_PREFIX)])


def in_namespace(namespace: str) -> str:
    return f"{LABEL_NAMESPACE} == {quote(namespace)}"


def service_accounts(names: Iterable[str] | None, selector: str | None) -> str:
    """The selector for a rule's ``serviceAccounts`` match."""
    parts: list[str] = []
    names = sorted(set(names or ()))
    if names:
        parts.append(f"{LABEL_SERVICE_ACCOUNT} in {{{', '.join(quote(n) for n in names)}}}")
    if selector:
        parts.append(prefixed(selector, SERVICE_ACCOUNT_PREFIX))
    return all_of(parts)
