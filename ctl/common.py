"""What every ``tortie`` command shares: datastore access and error reporting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from datastore.etcd_config import ConfigError, EtcdConfig
from datastore.kinds import KindInfo, UnknownKind, by_cli_name
from datastore.model_base import ResourceInvalid
from datastore.resources import Resources
from datastore.store import DatastoreError, Store
from ipam.blocks import IPAMError

T = TypeVar("T")


class CLIError(click.ClickException):
    """An error for the user: printed as ``error: ...``, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _config(ctx: click.Context) -> EtcdConfig:
    obj = ctx.find_root().obj or {}
    try:
        return EtcdConfig.load(**obj)
    except ConfigError as e:
        raise CLIError(str(e)) from None


def run(ctx: click.Context, fn: Callable[[Resources], Awaitable[T]]) -> T:
    """Run ``fn`` against a connected datastore, turning datastore errors into CLI errors."""
    config = _config(ctx)

    async def main() -> T:
        async with Store(config) as store:
            return await fn(Resources(store))

    try:
        return asyncio.run(main())
    except (DatastoreError, ResourceInvalid, IPAMError) as e:
        raise CLIError(str(e)) from None


def kind_info(name: str) -> KindInfo:
    try:
        return by_cli_name(name)
    except UnknownKind as e:
        raise CLIError(str(e)) from None


