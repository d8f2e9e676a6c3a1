"""What systemd does for hostnic.socket + hostnic.service, for tests on a
machine without systemd as PID 1: hold the listening socket (mode from the
unit), and on each "start" line run ExecStart with LISTEN_FDS/LISTEN_PID/
LISTEN_FDNAMES and a NOTIFY_SOCKET (and WATCHDOG_USEC, as WatchdogSec= sets
it), answering "ready SECONDS" once it sends READY=1. "stop" sends SIGTERM and
answers "stopped RC PINGS", PINGS being the WATCHDOG=1 messages it got. Runs
inside the network and mount namespace the test chose (via nsenter).

    python activator.py PATH MODE FDNAME WATCHDOG_USEC -- EXECSTART...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def main() -> None:
    path, mode, fdname, watchdog = sys.argv[1], int(sys.argv[2], 8), sys.argv[3], sys.argv[4]
    command = sys.argv[sys.argv.index("--") + 1:]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, mode)
    listener.listen(128)
    scratch = tempfile.TemporaryDirectory()
    notify_path = os.path.join(scratch.name, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    child: subprocess.Popen[bytes] | None = None

    def as_fd3() -> None:
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)

    for line in sys.stdin:
        word = line.strip()
        if word == "start":
            started = time.monotonic()
            env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": fdname,
                   "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": watchdog}
            child = subprocess.Popen(["sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh",
                                      *command], env=env, close_fds=False, preexec_fn=as_fd3,
                                     stdout=sys.stderr, stderr=sys.stderr)
            pings = 0
            while True:  # pings may come before READY=1
                message = notify.recv(4096).decode()
                if message == "WATCHDOG=1":
                    pings += 1
                    continue
                break
            print(f"ready {time.monotonic() - started:.3f} {message.splitlines()[0]}", flush=True)
        elif word == "stop" and child is not None:
            child.send_signal(signal.SIGTERM)
            code = child.wait(timeout=60)
            notify.settimeout(0.5)
            try:
                while True:  # the pings since READY=1, then STOPPING=1
                    pings += notify.recv(4096) == b"WATCHDOG=1"
            except OSError:
                pass
            notify.settimeout(60)
            print(f"stopped {code} {pings}", flush=True)
            child = None
        elif word == "quit":
            break
    if child is not None:
        child.kill()
        child.wait()
    notify.close()
    scratch.cleanup()


if __name__ == "__main__":
    main()
