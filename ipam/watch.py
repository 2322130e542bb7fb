"""What a watcher of the IPAM blocks needs: the datastore prefix to watch and the parser of a
watched document.

The routing agent mirrors every block (a block's affinity says which node routes it) with a
syncer; these two functions keep the key layout (:mod:`ipam.keys`) and the document format
(:mod:`ipam.blocks`) inside ``ipam/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ipam import keys
from ipam.blocks import Block


def block_watch_prefix() -> str:
    """The datastore prefix under which every block document is stored."""
    return keys.BLOCKS


def parse_watched_block(key: str, doc: Mapping[str, Any], revision: int = 0) -> Block:
    """The block stored under ``key`` (a key under :func:`block_watch_prefix`).

    ValueError, naming what is wrong, when ``key`` is not a block key, the document is not a
    valid block document, or it is the document of another block than its key says.
    """
    cidr = keys.block_cidr(key)
    block = Block.from_dict(doc, revision)
    if block.cidr != cidr:
        raise ValueError(f"block document at {key} is for block {block.cidr}, not {cidr}")
    return block
