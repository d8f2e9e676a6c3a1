"""One log line per driver call: what the core did during a call goes into
that call's line; work done in the background logs its own."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from twisted.logger import Logger

_story: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "hostnic_story", default=None)
_log = Logger(namespace="hostnic.core")


def narrate(text: str) -> None:
    """Say what the core did. During a driver call it goes into that call's
    one log line (a lifecycle used to cost a dozen log events); otherwise, as
    for work done in the background, it is logged on its own."""
    story = _story.get()
    if story is None:
        _log.info("{text}", text=text)
    else:
        story.append(text)


@contextlib.contextmanager
def telling() -> Iterator[list[str]]:
    """Collect what ``narrate`` says while a call is served."""
    story: list[str] = []
    token = _story.set(story)
    try:
        yield story
    finally:
        _story.reset(token)


def untold() -> None:
    """Background work started during a call tells its own story: call this
    first thing in its coroutine (which runs in a copy of the call's context)."""
    _story.set(None)
