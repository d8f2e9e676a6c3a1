"""A log observer for running under systemd: each line on stdout carries its
syslog priority as a ``<N>`` prefix, which journald reads, and no timestamp
(journald adds its own). Use with ``twistd --logger hostnic.journald.observer``."""

from __future__ import annotations

import sys
from typing import IO, Any

import attrs
from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

PRIORITIES = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4,
              LogLevel.error: 3, LogLevel.critical: 2}


@implementer(ILogObserver)
@attrs.define
class JournaldObserver:
    stream: IO[str]

    def __call__(self, event: dict[str, Any]) -> None:
        priority = PRIORITIES.get(event.get("log_level", LogLevel.info), 6)
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
            priority = min(priority, 3)
        namespace = event.get("log_namespace", "-")
        lines = text.rstrip("\n").splitlines() or [""]
        self.stream.write("".join(f"<{priority}>[{namespace}] {line}\n" for line in lines))
        self.stream.flush()


def observer() -> JournaldObserver:
    return JournaldObserver(sys.stdout)
