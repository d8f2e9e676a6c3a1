"""sd_notify without libsystemd: one datagram to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STOPPING=1``...); False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), path)
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """systemd's watchdog period in seconds (``WatchdogSec=``), if it is meant
    for this process; pings must come at least this often."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000
