"""Bounded echoes of what clients send: an answer, a log line or an event
never carries more than a short, quoted excerpt of a request."""

from __future__ import annotations

from typing import Any

ECHO = 64  # characters of a client's value that a message repeats
MESSAGE = 1024  # characters of any message that leaves hostnic


def quoted(value: Any, limit: int = ECHO) -> str:
    """``repr`` of a client's value, cut to ``limit`` characters with the full
    length named, so a 1 MB option name costs a few dozen bytes to refuse."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def capped(message: str, limit: int = MESSAGE) -> str:
    """The last guard at an edge: no message is longer than ``limit``."""
    return message if len(message) <= limit else message[:limit - 3] + "..."


def short(object_id: str) -> str:
    """Docker's short form of a network or endpoint id."""
    return object_id[:12]
