"""What the fast-path bench measures hostnic against, in the same run and
the same namespace: the seed prototype (Flask) under gunicorn with one
gthread worker and four threads, as it would be deployed, and a minimal Klein
app (bench/minimal_klein.py), the floor of any Klein driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.host import TWISTD, BenchHost, first_answer

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOTYPE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "seed", "prototype.py"))
BENCH_VENV = os.path.join(os.path.dirname(HERE), ".venv-bench")


def bench_python() -> str:
    """The interpreter with the prototype's packages (flask, gunicorn),
    made on first use from bench/requirements.txt, apart from hostnic's."""
    python = os.path.join(BENCH_VENV, "bin", "python")
    if not os.path.exists(os.path.join(BENCH_VENV, "bin", "gunicorn")):
        subprocess.run([sys.executable, "-m", "venv", BENCH_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "-r",
                        os.path.join(HERE, "requirements.txt")], check=True)
    return python


class Reference:
    """One reference server serving inside ``host``'s namespace."""

    def __init__(self, host: BenchHost, kind: str) -> None:
        self.host, self.kind = host, kind
        self.sock = os.path.join(host.work, f"{kind}.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.kind == "prototype":
            if not os.path.exists(PROTOTYPE):
                raise SystemExit(f"the prototype is not at {PROTOTYPE}")
            env.update(SEED_SOCKET=self.sock,
                       SEED_CONFIG_FILE=os.path.join(self.host.work, "prototype.json"))
            gunicorn = os.path.join(os.path.dirname(bench_python()), "gunicorn")
            return [gunicorn, "--worker-class", "gthread", "--workers", "1", "--threads", "4",
                    "--bind", f"unix:{self.sock}", "--chdir", os.path.dirname(PROTOTYPE),
                    "--log-level", "warning", "prototype:app"], env
        python = os.path.join(os.path.dirname(TWISTD), "python3")
        return [python, os.path.join(HERE, "minimal_klein.py"), self.sock], env

    def start(self) -> float:
        """Seconds from spawn to the first answered request."""
        command, env = self.command()
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        started = time.perf_counter()
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.host.netns, *command], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        return first_answer(self.sock, self.proc, started,
                            lambda: f"the {self.kind} reference did not start")

    def rss_mib(self) -> float:
        """Resident memory of the server's processes (gunicorn's master and worker)."""
        assert self.proc is not None
        pids = subprocess.run(["pgrep", "-s", str(self.proc.pid)], capture_output=True,
                              text=True).stdout.split()
        total = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total / 1024

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: gunicorn's worker too
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
