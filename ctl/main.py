"""The ``tortie`` command line: resources (calicoctl's verbs and kind names)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import click

from ctl.common import CLIError, kind_info, run
from ctl.ipam import ADMIN
from ctl.ipam import ipam as ipam_group
from ctl.lab import lab as lab_group
from ctl.node import node as node_group
from ctl.output import FORMATS, render
from ctl.policy import policy as policy_group
from datastore.documents import Document, DocumentError, load_json, read_sources
from datastore.kinds import KindInfo, UnknownKind, by_document, by_plural
from datastore.model_base import ResourceInvalid
from datastore.resources import (
    PAST_TENSE,
    PartialWrite,
    Resources,
    Verb,
    describe,
    to_resource,
)
from datastore.store import DatastoreError, NotFound
from datastore.unsupported import warnings
from ipam.node_release import release_node, remove_node

_NODE = by_plural("nodes")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--etcd-endpoints", envvar=None, help="etcd URLs, comma separated "
              "[env TORTIE_ETCD_ENDPOINTS; default http://127.0.0.1:2379]")
@click.option("--etcd-ca-cert-file", help="CA bundle for https endpoints")
@click.option("--etcd-cert-file", help="client certificate")
@click.option("--etcd-key-file", help="client key")
@click.option("--etcd-timeout", type=float, help="seconds to wait for etcd (default 5)")
@click.option("-c", "--config", "config_file",
              help="config file (calicoctl's CalicoAPIConfig format) [env TORTIE_CONFIG]")
@click.pass_context
def cli(ctx: click.Context, etcd_endpoints: str | None, etcd_ca_cert_file: str | None,
        etcd_cert_file: str | None, etcd_key_file: str | None, etcd_timeout: float | None,
        config_file: str | None) -> None:
    """Tortie: Kubernetes pod networking, managed with Calico's resources."""
    ctx.obj = {"endpoints": etcd_endpoints, "ca_cert_file": etcd_ca_cert_file,
               "cert_file": etcd_cert_file, "key_file": etcd_key_file,
               "timeout": etcd_timeout, "config_file": config_file}


# --- apply / create / replace / delete -f -------------------------------------------------------

Loaded = tuple[KindInfo, Any, Document]


def _load(files: tuple[str, ...], namespace: str | None) -> list[Loaded]:
    """Read and validate every document first: any error, and nothing is written."""
    try:
        result = read_sources(list(files))
    except DocumentError as e:
        raise CLIError(f"{e}\nnothing was written") from None
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    loaded, errors = validate_documents(result.documents, namespace)
    if errors:
        more = len(errors) - MAX_ERRORS
        shown = errors[:MAX_ERRORS] + ([f"... and {more} more"] if more > 0 else [])
        raise CLIError("nothing was written; fix these documents:\n  " + "\n  ".join(shown))
    if not loaded:
        raise CLIError("no resources found in " + ", ".join(files))
    return loaded


def validate_documents(documents: list[Document], namespace: str | None,
                       ) -> tuple[list[Loaded], list[str]]:
    """Each document as (kind, model, document), and an error line per bad one.

    A resource given twice is an error too: one command writes each resource once.
    """
    loaded: list[Loaded] = []
    errors: list[str] = []
    first: dict[str, str] = {}
    for doc in documents:
        if namespace and isinstance(doc.data, dict) and _namespaced(doc.data):
            meta = doc.data.setdefault("metadata", {})
            if isinstance(meta, dict):
                meta.setdefault("namespace", namespace)
        try:
            info, obj = to_resource(doc.data)
        except ResourceInvalid as e:
            errors.append(_explain(doc, e))
            continue
        if namespace and info.namespaced and obj.namespace != namespace:
            errors.append(f"{doc.where}: metadata.namespace: {obj.namespace!r} does not match "
                          f"--namespace {namespace!r}")
            continue
        key = Resources.key(info, obj.name, obj.namespace)
        if key in first:
            errors.append(f"{doc.where}: {describe(info, obj)} is given twice (first at "
                          f"{first[key]}); give each resource once")
            continue
        first[key] = doc.where
        loaded.append((info, obj, doc))
    return loaded, errors


def _namespaced(data: dict[str, Any]) -> bool:
    try:
        return by_document(data.get("apiVersion"), data.get("kind")).namespaced
    except UnknownKind:
        return False


#: Longest error line quoted back (a document may hold a megabyte in one field), and most
#: documents' errors shown (a YAML alias can repeat one bad document thousands of times).
MAX_ERROR_LINE = 400
MAX_ERRORS = 50


def _explain(doc: Document, e: ResourceInvalid) -> str:
    """``file:line: Kind(name) is invalid:`` and each error at the line of its field."""
    if len(e.errors) == 1:
        err = e.errors[0]
        return _cap(f"{doc.source}:{doc.line_of(err.partition(':')[0])}: {e.what} is invalid: "
                    f"{err}")
    lines = [_cap(f"{doc.where}: {e.what} is invalid:")]
    lines += [_cap(f"    {doc.source}:{doc.line_of(err.partition(':')[0])}: {err}")
              for err in e.errors]
    return "\n".join(lines)


def _cap(line: str) -> str:
    if len(line) <= MAX_ERROR_LINE:
        return line
    return f"{line[:MAX_ERROR_LINE]}... ({len(line) - MAX_ERROR_LINE} more characters)"


def _summary(verb: str, done: list[KindInfo]) -> None:
    for kind, n in Counter(i.kind for i in done).items():
        click.echo(f"Successfully {verb} {n} '{kind}' resource(s)")


def _write_all(ctx: click.Context, files: tuple[str, ...], namespace: str | None, verb: Verb,
               skip: bool = False) -> None:
    """Validate every document, then write them all or nothing (``Resources.write_all``)."""
    loaded = _load(files, namespace)
    docs = {Resources.key(info, obj.name, obj.namespace): doc for info, obj, doc in loaded}

    async def go(res: Resources) -> None:
        try:
            result = await res.write_all(verb, [(info, obj) for info, obj, _ in loaded], skip)
        except PartialWrite as e:
            raise CLIError(f"partial success: {e}" if e.written else str(e)) from None
        except ResourceInvalid as e:  # found against the store: overlapping IPPools
            doc = next((d for i, o, d in loaded if i.kind == e.kind and o.name == e.name), None)
            raise CLIError(f"{_explain(doc, e) if doc else e}\nnothing was written") from None
        except DatastoreError as e:
            doc = docs.get(getattr(e, "key", ""))
            raise CLIError(f"{doc.where + ': ' if doc else ''}{e}\nnothing was written") \
                from None
        if verb == "delete":  # a Node deleted gives back what it held, as `delete node`
            for info, obj in result.written:
                if info.plural == _NODE.plural:
                    done = await release_node(res.store, obj.name, ADMIN)
                    click.echo(done.summary())
        _summary(PAST_TENSE[verb], [info for info, _ in result.written + result.skipped])
        for _, obj in result.written if verb != "delete" else ():
            for line in warnings(obj):
                click.echo(line, err=True)

    run(ctx, go)


_file_opt = click.option("-f", "--filename", "files", multiple=True, required=True,
                         help="file, directory or - for stdin (repeatable)")
_ns_opt = click.option("-n", "--namespace", help="namespace for namespaced resources")


@cli.command()
@_file_opt
@_ns_opt
@click.pass_context
def apply(ctx: click.Context, files: tuple[str, ...], namespace: str | None) -> None:
    """Create resources, or replace them if they exist."""
    _write_all(ctx, files, namespace, "apply")


@cli.command()
@_file_opt
@_ns_opt
@click.option("--skip-exists", is_flag=True, help="skip resources that already exist")
@click.pass_context
def create(ctx: click.Context, files: tuple[str, ...], namespace: str | None,
           skip_exists: bool) -> None:
    """Create resources; it is an error if one exists."""
    _write_all(ctx, files, namespace, "create", skip_exists)


@cli.command()
@_file_opt
@_ns_opt
@click.pass_context
def replace(ctx: click.Context, files: tuple[str, ...], namespace: str | None) -> None:
    """Replace existing resources (conditional on resourceVersion when given)."""
    _write_all(ctx, files, namespace, "replace")


@cli.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, help="file, directory or -")
@_ns_opt
@click.option("--skip-not-exists", is_flag=True, help="no error for missing resources")
@click.pass_context
def delete(ctx: click.Context, kind: str | None, names: tuple[str, ...], files: tuple[str, ...],
           namespace: str | None, skip_not_exists: bool) -> None:
    """Delete resources: KIND NAME... or -f FILE.

    A Node goes with what it held (as calicoctl): its workload endpoints and their
    addresses, its tunnel addresses, its block affinities (empty blocks are deleted)."""
    skip = NotFound if skip_not_exists else None
    if files:
        if kind:
            raise CLIError("give either KIND NAME or -f FILE, not both")
        _write_all(ctx, files, namespace, "delete", skip_not_exists)
        return
    if not kind or not names:
        raise CLIError("delete needs KIND NAME... or -f FILE")
    info = kind_info(kind)

    async def go(res: Resources) -> None:
        n = 0
        for name in names:
            try:
                if info.plural == _NODE.plural:
                    # as calicoctl: its endpoints, addresses, tunnel addresses and block
                    # affinities are released first, then the Node goes
                    click.echo((await remove_node(res.store, name, ADMIN)).summary())
                else:
                    await res.delete(info, name, namespace)
                n += 1
            except NotFound:
                if skip is None:
                    raise
        click.echo(f"Successfully deleted {n} '{info.kind}' resource(s)")

    run(ctx, go)


# --- get / patch / label ------------------------------------------------------------------------

@cli.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@_ns_opt
@click.option("-A", "--all-namespaces", is_flag=True, help="namespaced kinds: every namespace")
@click.option("-o", "--output", "fmt", default="ps", show_default=True,
              type=click.Choice(FORMATS), help="output format")
@click.pass_context
def get(ctx: click.Context, kind: str, names: tuple[str, ...], namespace: str | None,
        all_namespaces: bool, fmt: str) -> None:
    """Show resources of KIND (all, or the NAMEs given)."""
    info = kind_info(kind)
    if all_namespaces and namespace:
        raise CLIError("give either --namespace or --all-namespaces, not both")
    ns = None if all_namespaces else (namespace or "default")

    async def go(res: Resources) -> list[Any]:
        if names:
            return [await res.get(info, n, ns) for n in names]
        return await res.list(info, ns)

    items = run(ctx, go)
    single = len(names) == 1
    click.echo(render(info, items, fmt, single=single, all_namespaces=all_namespaces), nl=False)


@cli.command()
@click.argument("kind")
@click.argument("name")
@click.option("-p", "--patch", "patch_text", required=True, help="JSON merge patch")
@_ns_opt
@click.pass_context
def patch(ctx: click.Context, kind: str, name: str, patch_text: str,
          namespace: str | None) -> None:
    """Change fields of a resource with a JSON merge patch."""
    info = kind_info(kind)
    try:
        body = load_json(patch_text, "--patch")
    except json.JSONDecodeError as e:
        raise CLIError(f"--patch: not valid JSON: {e.msg} at position {e.pos}") from None
    except DocumentError as e:
        raise CLIError(str(e)) from None
    if not isinstance(body, dict):
        raise CLIError("--patch: must be a JSON object")
    obj = run(ctx, lambda res: res.patch(info, name, namespace, body))
    click.echo(f"Successfully patched 1 '{info.kind}' resource")
    for line in warnings(obj):
        click.echo(line, err=True)


@cli.command()
@click.argument("kind")
@click.argument("name")
@click.argument("changes", nargs=-1, required=True)
@_ns_opt
@click.option("--overwrite", is_flag=True, help="allow changing an existing label's value")
@click.pass_context
def label(ctx: click.Context, kind: str, name: str, changes: tuple[str, ...],
          namespace: str | None, overwrite: bool) -> None:
    """Set (k=v) or remove (k-) labels of a resource."""
    info = kind_info(kind)
    set_labels: dict[str, str] = {}
    remove: list[str] = []
    for c in changes:
        if c.endswith("-") and "=" not in c:
            remove.append(c[:-1])
        elif "=" in c:
            k, _, v = c.partition("=")
            set_labels[k] = v
        else:
            raise CLIError(f"label {c!r}: use key=value to set or key- to remove")
    run(ctx, lambda res: res.label(info, name, namespace, set_labels, remove, overwrite))
    click.echo(f"Successfully labelled 1 '{info.kind}' resource")


cli.add_command(lab_group)
cli.add_command(ipam_group)
cli.add_command(node_group)
cli.add_command(policy_group)


@cli.command()
def version() -> None:
    """Show the version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        click.echo(f"tortie {v('tortie')}")
    except PackageNotFoundError:
        click.echo("tortie (not installed)")


def main() -> None:
    cli(prog_name="tortie")


if __name__ == "__main__":
    sys.exit(main())
