"""``hostnic-cni``: the CNI plugin executable, a thin shim over the daemon.

The runtime runs it as root with the ``CNI_*`` environment and the network
configuration on stdin. It keeps no state: it opens the namespace at
``CNI_NETNS`` and makes a netlink socket inside it (``hand_over``), sends
both descriptors with the command to the daemon's CNI socket, and prints the
daemon's answer with the spec's exit status. It runs the IPAM plugin the
configuration names itself (it has the runtime's environment and
``CNI_PATH``): before an ADD (releasing the address if the ADD fails), after
a DEL, for CHECK, and for the attachments GC collects. VERSION is answered
here.

Standard library only: it starts in milliseconds, and needs nothing of the
daemon's dependencies.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, NoReturn

VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
DEFAULT_SOCKET = "/run/hostnic/cni.sock"
HEADER = struct.Struct(">I")
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
TRY_AGAIN_LATER, NOT_AVAILABLE, INVALID_CONFIG, DECODING_FAILURE = 11, 50, 7, 6
INVALID_ENVIRONMENT, IO_FAILURE = 4, 5
ANSWER_SECONDS = 120.0  # a DEL's restore of a NIC with thousands of routes included
IPAM_SECONDS = 120.0  # the dhcp plugin waits for a lease


class Failed(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def hand_over(path: str) -> tuple[int, socket.socket]:
    """The namespace at ``path`` opened, and a netlink socket made inside it
    (from a thread of its own that enters it and ends, so the caller's
    threads stay where they are). OSError if it cannot."""
    import ctypes  # (here, not at start: VERSION, GC and STATUS need none of it)
    import threading
    netns = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    made: list[socket.socket] = []
    failed: list[OSError] = []
    libc = ctypes.CDLL(None, use_errno=True)

    def inside() -> None:
        if libc.setns(netns, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            failed.append(OSError(code, f"cannot enter {path}: {os.strerror(code)}"))
            return
        made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE))

    thread = threading.Thread(target=inside, name="hostnic-hand-over")
    thread.start()
    thread.join()
    if failed:
        os.close(netns)
        raise failed[0]
    return netns, made[0]


class NotRunning(ConnectionError):
    """Nothing listens on the CNI socket: hostnic is not running."""


class NoAnswer(ConnectionError):
    """hostnic took the request but gave no answer (it may have acted)."""


def ask_daemon(path: str, request: dict[str, Any], fds: list[int]) -> tuple[int, Any]:
    """Send one request (and the descriptors) to the daemon: its (exit, output).
    NotRunning if nothing listens, NoAnswer if no whole answer came."""
    data = json.dumps(request).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(ANSWER_SECONDS)
        try:
            sock.connect(path)
        except OSError as e:
            raise NotRunning(f"hostnic does not answer on {path} ({e.strerror or e}); "
                             f"is the hostnic service running?") from None
        raw = b""
        try:
            first = HEADER.pack(len(data)) + data
            if fds:
                sent = sock.sendmsg([first], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               struct.pack(f"{len(fds)}i", *fds))])
            else:
                sent = sock.send(first)
            if sent < len(first):  # (sendall of nothing still writes: EPIPE if answered)
                sock.sendall(first[sent:])
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                raw += chunk
        except socket.timeout:
            raise NoAnswer(f"hostnic did not answer on {path} within "
                           f"{ANSWER_SECONDS:.0f} s") from None
        except OSError as e:
            raise NoAnswer(f"hostnic closed the connection on {path} without an answer "
                           f"({e.strerror or e})") from None
    if len(raw) < HEADER.size or len(raw) < HEADER.size + HEADER.unpack_from(raw)[0]:
        raise NoAnswer(f"hostnic closed the connection on {path} without an answer")
    try:
        answer = json.loads(raw[HEADER.size:HEADER.size + HEADER.unpack_from(raw)[0]])
        status, output = answer["exit"], answer["output"]
        if not isinstance(status, int) or not isinstance(output, (dict, type(None))):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise NoAnswer(f"hostnic answered on {path} with something that is not an "
                       f"answer") from None
    return status, output


def run_ipam(config: dict[str, Any], raw: bytes, command: str,
             names: dict[str, str] | None = None) -> Any:
    """Run the IPAM plugin ``ipam.type`` from ``CNI_PATH`` for ``command``
    with the runtime's environment and configuration; its result (ADD), or
    Failed with its error. A 1.1.0 configuration is given to it as 1.0.0
    (prevResult included): IPAM results are the same in both, and IPAM
    plugins that predate 1.1.0 (Debian 12's) refuse it."""
    if config.get("cniVersion") == "1.1.0":
        older: dict[str, Any] = {**config, "cniVersion": "1.0.0"}
        previous = config.get("prevResult")
        if isinstance(previous, dict):
            older["prevResult"] = {
                **previous, "cniVersion": "1.0.0",
                "interfaces": [{k: v for k, v in i.items() if k not in ("mtu", "pciID")}
                               for i in previous.get("interfaces") or [] if isinstance(i, dict)]}
        raw = json.dumps(older).encode()
    return _run_ipam(config, raw, command, names or {})


def _run_ipam(config: dict[str, Any], raw: bytes, command: str,
              names: dict[str, str]) -> Any:
    import subprocess
    kind = config["ipam"].get("type") if isinstance(config["ipam"], dict) else None
    if not isinstance(kind, str) or not kind or "/" in kind:
        raise Failed(INVALID_CONFIG, "ipam.type must name an IPAM plugin")
    dirs = [d for d in os.environ.get("CNI_PATH", "").split(":") if d]
    plugin = next((os.path.join(d, kind) for d in dirs
                   if os.access(os.path.join(d, kind), os.X_OK)), None)
    if plugin is None:
        raise Failed(INVALID_CONFIG, f"the IPAM plugin {kind!r} is not in CNI_PATH "
                                     f"({':'.join(dirs) or 'unset'})")
    try:
        done = subprocess.run([plugin], input=raw, capture_output=True, timeout=IPAM_SECONDS,
                              env={**os.environ, **names, "CNI_COMMAND": command})
    except subprocess.TimeoutExpired:
        raise Failed(IO_FAILURE, f"the IPAM plugin {kind} did not answer {command} within "
                                 f"{IPAM_SECONDS:.0f} s") from None
    output = done.stdout.strip()
    if done.returncode != 0:
        try:
            error = json.loads(output)
            raise Failed(int(error.get("code", IO_FAILURE)),
                         f"IPAM plugin {kind}: {error.get('msg', '')}", error.get("details", ""))
        except (ValueError, AttributeError, TypeError):
            said = (output or done.stderr.strip()).decode(errors="replace")[:500]
            raise Failed(IO_FAILURE, f"the IPAM plugin {kind} failed {command}: "
                                     f"{said}") from None
    if command != "ADD":
        return None
    try:
        return json.loads(output)
    except ValueError:
        raise Failed(DECODING_FAILURE, f"the IPAM plugin {kind} answered no JSON") from None


def serve(command: str, raw: bytes) -> tuple[int, Any]:
    """One CNI command: (exit status, what to print)."""
    try:
        config = json.loads(raw)
    except ValueError:
        raise Failed(DECODING_FAILURE, "the network configuration on stdin is not JSON")
    if not isinstance(config, dict):
        raise Failed(DECODING_FAILURE, "the network configuration on stdin is not an object")
    if command == "VERSION":
        return 0, {"cniVersion": config.get("cniVersion") if config.get("cniVersion")
                   in VERSIONS else VERSIONS[-1], "supportedVersions": list(VERSIONS)}
    path = config.get("socket", DEFAULT_SOCKET)
    if not isinstance(path, str) or not path:
        raise Failed(INVALID_CONFIG, "socket must be the path of hostnic's CNI socket")
    ipam = bool(config.get("ipam")) and not config.get("adopt")
    env = {key: os.environ.get(key, "") for key in
           ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS")}
    request: dict[str, Any] = {"env": env, "config": config, "ipam": None}
    fds: list[int] = []
    netns = os.environ.get("CNI_NETNS", "")
    try:
        if command in ("ADD", "CHECK"):
            if not netns:
                raise Failed(INVALID_ENVIRONMENT, f"{command} needs CNI_NETNS")
            if command == "ADD" and ipam:
                request["ipam"] = run_ipam(config, raw, "ADD")
            try:
                fd, sock = hand_over(netns)
            except OSError as e:
                raise Failed(INVALID_ENVIRONMENT, f"CNI_NETNS {netns}: {e.strerror or e}")
            fds = [fd, sock.detach()]
        elif command == "DEL" and netns:
            try:
                fd, sock = hand_over(netns)
                fds = [fd, sock.detach()]
            except OSError:
                pass  # gone already: hostnic brings the NIC home from the one it holds
        try:
            status, output = ask_daemon(path, request, fds)
        except NotRunning as e:
            if command != "DEL":
                raise Failed(NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER,
                             str(e)) from None
            # hostnic reconciles what it holds when it starts: a NIC whose
            # namespace is gone is given back then.
            print(f"hostnic-cni: {e}; hostnic gives back what it held when it starts",
                  file=sys.stderr)
            status, output = 0, None
        except NoAnswer as e:
            # It may have acted, or not: the runtime must ask again.
            raise Failed(NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER,
                         str(e)) from None
    except BaseException:
        if command == "ADD" and request["ipam"] is not None:
            _release_address(config, raw)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    if command == "ADD" and status != 0 and request["ipam"] is not None:
        _release_address(config, raw)
    if command == "DEL" and ipam and status == 0:
        run_ipam(config, raw, "DEL")
    if command == "CHECK" and ipam and status == 0:
        run_ipam(config, raw, "CHECK")
    if command == "GC" and ipam and status == 0 and isinstance(output, dict):
        for gone in output.get("collected") or []:  # their addresses go with them
            try:
                run_ipam(config, raw, "DEL", {"CNI_CONTAINERID": str(gone["containerID"]),
                                              "CNI_IFNAME": str(gone["ifname"])})
            except (Failed, KeyError, TypeError) as e:
                print(f"hostnic-cni: releasing an address of {gone}: {e}", file=sys.stderr)
    return status, (output if command == "ADD" or status != 0 else None)


def _release_address(config: dict[str, Any], raw: bytes) -> None:
    try:
        run_ipam(config, raw, "DEL")
    except Failed as e:
        print(f"hostnic-cni: releasing the address failed: {e.msg}", file=sys.stderr)


def main() -> NoReturn:
    command = os.environ.get("CNI_COMMAND", "")
    raw = sys.stdin.buffer.read(1 << 20)
    version = "1.1.0"
    try:
        parsed = json.loads(raw)
        if isinstance(parsed, dict) and parsed.get("cniVersion") in VERSIONS:
            version = parsed["cniVersion"]
    except ValueError:
        pass
    try:
        if command not in ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"):
            raise Failed(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not a CNI command")
        status, output = serve(command, raw)
    except Failed as e:
        status, output = 1, {"cniVersion": version, "code": e.code, "msg": e.msg}
        if e.details:
            output["details"] = e.details
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
        sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
