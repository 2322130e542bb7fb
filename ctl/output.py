"""Rendering resources for the terminal: tables (ps/wide), yaml, json, name."""

from __future__ import annotations

import json
from typing import Any

import yaml

from ctl.columns import columns_for
from datastore.kinds import KindInfo

FORMATS = ("ps", "wide", "yaml", "json", "name")


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False,
                     allow_unicode=True)


def as_list(info: KindInfo, items: list[Any]) -> dict[str, Any]:
    return {"apiVersion": info.api_version, "kind": f"{info.kind}List",
            "items": [i.dump() for i in items], "metadata": {}}


def render(info: KindInfo, items: list[Any], fmt: str, *, single: bool,
           all_namespaces: bool = False) -> str:
    if fmt in ("yaml", "json"):
        data = items[0].dump() if single and len(items) == 1 else as_list(info, items)
        if fmt == "yaml":
            return to_yaml(data)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    if fmt == "name":
        return "".join(f"{info.names[0]}/{i.name}\n" for i in items)
    columns = columns_for(info, wide=fmt == "wide", all_namespaces=all_namespaces)
    return table([h for h, _ in columns], [[str(f(i)) for _, f in columns] for i in items])


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [headers, *rows]]
    return "\n".join(lines) + "\n"
