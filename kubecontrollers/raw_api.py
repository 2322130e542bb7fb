"""Answers of kubernetes_asyncio calls made with ``_preload_content=False`` (the raw
response, JSON read as plain dicts): the transport the lease election and the event recorder
share."""

from __future__ import annotations

import contextlib
import json
from typing import Any


async def read_answer(resp: Any) -> tuple[int, Any]:
    """Status and JSON body (or the body's text, cut to 500 characters) of a raw response;
    the response is released."""
    try:
        raw = await resp.read()
    finally:
        with contextlib.suppress(Exception):
            resp.release()
    text = raw.decode(errors="replace")
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text[:500]


def error_message(body: Any) -> str:
    """What an API server's error answer says (its Status ``message`` or ``reason``)."""
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or body)[:500]
    return str(body)[:500]
