"""Getting a ``unix:PATH[:k=v...]`` endpoint's path ready before listening:
its directory made, and a dead predecessor's socket file removed.

Twisted's pid lock (``lockfile=1``, its default) does the latter, but fails
in a managed plugin: every start is pid 1 of its own namespace, so the old
lock always looks alive. There ``lockfile=0``, and we ask the socket: a
file nobody accepts on (ECONNREFUSED) is stale; a live hostnic answers and
keeps it."""

from __future__ import annotations

import errno
import os
import socket
import stat

from hostnic.endpoints import parse_endpoint


def prepare(description: str) -> None:
    """Make the socket's directory; remove its file if no one listens there."""
    endpoint = parse_endpoint(description)
    path, options = endpoint.unix_path, endpoint.options
    if path is None:
        return
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if options.get("lockfile", "1") != "0":
        return  # Twisted's own pid lock (its default) settles it
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return  # not ours to remove: the listen fails with a sentence
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(2)
        probe.connect(path)
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            os.unlink(path)
    finally:
        probe.close()
