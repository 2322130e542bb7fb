"""The ``tortie`` command line: resources (calicoctl's verbs and kind names)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import click

from ctl.common import CLIError, kind_info, run
from ctl.ipam import ipam as ipam_group
from ctl.lab import lab as lab_group
from ctl.node import node as node_group
from ctl.output import FORMATS, render
from ctl.policy import policy as policy_group
from datastore.documents import Document, DocumentError, read_sources
from datastore.kinds import KindInfo, UnknownKind, by_document
from datastore.model_base import ResourceInvalid
from datastore.resources import Resources, to_resource
from datastore.store import AlreadyExists, NotFound


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

def _load(files: tuple[str, ...], namespace: str | None) -> list[tuple[KindInfo, Any, str]]:
    """Read and validate every document first: any error, and nothing is written."""
    try:
        result = read_sources(list(files))
    except DocumentError as e:
        raise CLIError(str(e)) from None
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    loaded, errors = [], []
    for doc in result.documents:
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
        loaded.append((info, obj, doc.where))
    if errors:
        raise CLIError("nothing was written; fix these documents:\n  " + "\n  ".join(errors))
    if not loaded:
        raise CLIError("no resources found in " + ", ".join(files))
    return loaded


def _namespaced(data: dict[str, Any]) -> bool:
    try:
        return by_document(data.get("apiVersion"), data.get("kind")).namespaced
    except UnknownKind:
        return False


def _explain(doc: Document, e: ResourceInvalid) -> str:
    """``file:line: Kind(name) is invalid:`` and each error at the line of its field."""
    what = f"{e.kind}({e.name})" if e.name else (e.kind or "document")
    if len(e.errors) == 1:
        err = e.errors[0]
        return f"{doc.source}:{doc.line_of(err.partition(':')[0])}: {what} is invalid: {err}"
    lines = [f"{doc.where}: {what} is invalid:"]
    lines += [f"    {doc.source}:{doc.line_of(err.partition(':')[0])}: {err}" for err in e.errors]
    return "\n".join(lines)


def _summary(verb: str, done: list[KindInfo]) -> None:
    for kind, n in Counter(i.kind for i in done).items():
        click.echo(f"Successfully {verb} {n} '{kind}' resource(s)")


def _write_all(ctx: click.Context, files: tuple[str, ...], namespace: str | None, verb: str,
               op: Callable[[Resources, KindInfo, Any], Awaitable[Any]],
               skip: type[Exception] | None = None) -> None:
    loaded = _load(files, namespace)

    async def go(res: Resources) -> None:
        done: list[KindInfo] = []
        for info, obj, where in loaded:
            try:
                await op(res, info, obj)
            except Exception as e:
                if skip is not None and isinstance(e, skip):
                    done.append(info)
                    continue
                if done:
                    _summary(verb, done)
                    msg = f"partial success: {verb} the first {len(done)} of {len(loaded)} " \
                          f"resources; {where}: {e}"
                else:
                    msg = f"{where}: {e}"
                raise CLIError(msg) from None
            done.append(info)
        _summary(verb, done)

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
    _write_all(ctx, files, namespace, "applied", lambda r, i, o: r.apply(i, o))


@cli.command()
@_file_opt
@_ns_opt
@click.option("--skip-exists", is_flag=True, help="skip resources that already exist")
@click.pass_context
def create(ctx: click.Context, files: tuple[str, ...], namespace: str | None,
           skip_exists: bool) -> None:
    """Create resources; it is an error if one exists."""
    _write_all(ctx, files, namespace, "created", lambda r, i, o: r.create(i, o),
               AlreadyExists if skip_exists else None)


@cli.command()
@_file_opt
@_ns_opt
@click.pass_context
def replace(ctx: click.Context, files: tuple[str, ...], namespace: str | None) -> None:
    """Replace existing resources (conditional on resourceVersion when given)."""
    _write_all(ctx, files, namespace, "replaced", lambda r, i, o: r.replace(i, o))


@cli.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, help="file, directory or -")
@_ns_opt
@click.option("--skip-not-exists", is_flag=True, help="no error for missing resources")
@click.pass_context
def delete(ctx: click.Context, kind: str | None, names: tuple[str, ...], files: tuple[str, ...],
           namespace: str | None, skip_not_exists: bool) -> None:
    """Delete resources: KIND NAME... or -f FILE."""
    skip = NotFound if skip_not_exists else None
    if files:
        if kind:
            raise CLIError("give either KIND NAME or -f FILE, not both")
        _write_all(ctx, files, namespace, "deleted",
                   lambda r, i, o: r.delete(i, o.name, o.namespace), skip)
        return
    if not kind or not names:
        raise CLIError("delete needs KIND NAME... or -f FILE")
    info = kind_info(kind)

    async def go(res: Resources) -> None:
        n = 0
        for name in names:
            try:
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
        body = json.loads(patch_text)
    except json.JSONDecodeError as e:
        raise CLIError(f"--patch: not valid JSON: {e.msg} at position {e.pos}") from None
    if not isinstance(body, dict):
        raise CLIError("--patch: must be a JSON object")
    run(ctx, lambda res: res.patch(info, name, namespace, body))
    click.echo(f"Successfully patched 1 '{info.kind}' resource")


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
