"""Crash points for the SIGKILL soak test.

``HOSTNIC_CRASH_AT=join.recorded`` (or ``join.recorded:3``, the third time)
makes the daemon SIGKILL itself when it passes that point, so a test can stop
it exactly between two steps of a lifecycle. Unset, a crash point costs one
truth test. The names are listed in ``POINTS``.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "network.recorded",  # CreateNetwork's network is durable, not yet answered
    "endpoint.recorded",  # CreateEndpoint's claim is durable, not yet answered
    "join.recorded",  # the NIC's original state is durable, the NIC not yet renamed
    "join.renamed",  # the NIC wears its transit name, Join not yet answered
    "leave.recorded",  # Leave is durable, not yet answered
    "delete.marked",  # DeleteEndpoint's release is durable, the NIC not yet restored
    "delete.restored",  # the NIC is restored, its claim not yet dropped
    "delete.released",  # the claim is dropped, DeleteEndpoint not yet answered
)
# The CNI front end's (hostnic.core.attachments), apart: the soak drives Docker's.
CNI_POINTS = (
    "attach.claimed",  # ADD's claim is durable, the NIC not yet recorded
    "attach.moved",  # the NIC is inside the namespace, not yet configured
    "detach.marked",  # DEL's release is durable, the NIC not yet brought home
    "detach.home",  # the NIC is home under its transit name, not yet restored
)


def _armed() -> tuple[str, int] | None:
    setting = os.environ.get("HOSTNIC_CRASH_AT", "")
    if not setting:
        return None
    name, _, count = setting.partition(":")
    if name not in POINTS + CNI_POINTS:
        raise SystemExit(f"HOSTNIC_CRASH_AT={setting!r}: no such crash point "
                         f"(known: {', '.join(POINTS + CNI_POINTS)})")
    return name, int(count or 1)


_ARMED = _armed()
_passed: dict[str, int] = {}


def crashpoint(name: str) -> None:
    if _ARMED is None or _ARMED[0] != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] >= _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
