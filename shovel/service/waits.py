"""Waiting for whichever comes first: a task's end or an event (a stop signal, a second one)."""

from __future__ import annotations

import asyncio
from typing import Any


async def until(event: asyncio.Event, task: asyncio.Future[Any]) -> None:
    """Waits until `event` is set or `task` is done; never cancels `task`."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
