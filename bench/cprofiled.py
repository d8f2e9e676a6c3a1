"""twistd under cProfile, every thread of it (the reactor, the netlink
thread, the store's thread): the merged stats go to $HOSTNIC_PROFILE_OUT when
the reactor stops. Run by bench/where_time_goes.py as ``python bench/cprofiled.py
<twistd arguments>``."""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import threading
from typing import Any

profiles: list[cProfile.Profile] = []
lock = threading.Lock()


def _in_new_thread(frame: Any, event: str, arg: Any) -> None:
    # Called once per new thread: this thread's own profiler replaces it.
    profile = cProfile.Profile()
    with lock:
        profiles.append(profile)
    profile.enable()


def dump() -> None:
    merged: pstats.Stats | None = None
    for profile in profiles:
        profile.disable()  # (only the calling thread's stops; the others are done)
        profile.create_stats()
        if not getattr(profile, "stats", None):
            continue
        if merged is None:
            merged = pstats.Stats(profile)
        else:
            merged.add(profile)
    if merged is not None:
        merged.dump_stats(os.environ["HOSTNIC_PROFILE_OUT"])


if __name__ == "__main__":
    threading.setprofile(_in_new_thread)
    main = cProfile.Profile()
    profiles.append(main)
    from twisted.internet import reactor
    reactor.addSystemEventTrigger("after", "shutdown", dump)  # type: ignore[attr-defined]
    from twisted.scripts.twistd import run
    sys.argv[0] = "twistd"
    main.enable()
    run()
