"""hostnic-ctl: ask a running hostnic what it holds, over its admin API.

Plain standard library (no Twisted), so it starts fast and fails in one line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from typing import Any, Sequence

DEFAULT_ADMIN = "/run/hostnic/admin.sock"


class CtlError(Exception):
    pass


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (dockerd and the admin API both speak it)."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def connection(admin: str, timeout: float = 30) -> http.client.HTTPConnection:
    if admin.startswith("tcp:"):
        parts = admin.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise CtlError(f"--admin {admin!r}: use tcp:HOST:PORT or a unix socket path")
        return http.client.HTTPConnection(parts[1], int(parts[2]), timeout=timeout)
    return UnixHTTPConnection(admin.removeprefix("unix:"), timeout)


def call(admin: str, method: str, params: dict[str, Any] | None = None,
         token: str | None = None) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = connection(admin)
    try:
        conn.request("POST", "/rpc", body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise CtlError(f"cannot reach hostnic at {admin}: {reason} (is hostnic running?)") from None
    finally:
        conn.close()
    if response.status == 401:
        raise CtlError(f"hostnic at {admin} refused the request: a valid --token-file is needed")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise CtlError(f"hostnic at {admin} answered HTTP {response.status} without JSON") from None
    if "error" in answer:
        raise CtlError(answer["error"].get("message", "unknown error"))
    return answer["result"]


def table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return ",".join(map(str, value)) or "-"
        return str(value)
    grid = [[title for _, title in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in grid)


def short(value: str | None) -> str | None:
    return value[:12] if value else value


def when(stamp: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else None


def render(command: str, result: Any) -> str:
    if command == "status":
        rec = result.get("last_reconciliation") or {}
        return "\n".join([
            f"hostnic {result['version']}, pid {result['pid']}, up {result['uptime']:.0f}s",
            f"driver:  {result['endpoints']['driver']}",
            f"admin:   {result['endpoints']['admin']}",
            f"state:   {result['state_dir']}",
            f"networks {result['networks']}, endpoints {result['endpoints_count']}, "
            f"NICs claimed {result['nics_claimed']}, free {result['nics_free']}",
            f"last reconciliation: {when(rec.get('at')) or 'never'}"
            + (f" ({len(rec['restored'])} restored, {len(rec['released'])} released, "
               f"{len(rec['absent'])} away)" if rec else "")])
    if command == "networks":
        rows = [{"id": short(n["id"]), "gateway": n["gateway4"] or n["gateway6"],
                 "subnets": n["subnets"],
                 "pool": [f"{p['mac']}({p['name'] or '?'})" for p in n["pool"]],
                 "in_use": f"{sum(1 for p in n['pool'] if p['endpoint'])}/{len(n['pool'])}"}
                for n in result]
        return table(rows, [("id", "NETWORK"), ("gateway", "GATEWAY"), ("subnets", "SUBNETS"),
                            ("in_use", "IN USE"), ("pool", "POOL")])
    if command == "endpoints":
        rows = [{**e, "endpoint": short(e["endpoint"]), "network": short(e["network"]),
                 "joined": when(e["joined_at"]),
                 "was": (e["original"] or {}).get("name")} for e in result]
        return table(rows, [("endpoint", "ENDPOINT"), ("network", "NETWORK"), ("mac", "MAC"),
                            ("was", "HOST NAME"), ("phase", "PHASE"), ("joined", "JOINED"),
                            ("sandbox_key", "SANDBOX")])
    if command == "nics":
        rows = [{**n, "kind": n["driver"] or n["kind"], "network": short(n["network"]),
                 "state": f"{n['admin'] or '-'}/{n['oper'] or '-'}"} for n in result]
        return table(rows, [("name", "NAME"), ("mac", "MAC"), ("kind", "KIND"), ("pci", "PCI"),
                            ("mtu", "MTU"), ("state", "ADMIN/OPER"), ("status", "STATUS"),
                            ("network", "NETWORK"), ("addresses", "ADDRESSES")])
    if command == "events":
        rows = [{**e, "at": when(e["at"]),
                 "what": e.get("method") or e["kind"],
                 "ms": f"{e['seconds'] * 1000:.1f}" if "seconds" in e else None,
                 "outcome": ("ok" if e.get("ok") else e.get("error")) if e["kind"] == "call"
                 else json.dumps({k: v for k, v in e.items() if k not in ("at", "kind", "seconds")})}
                for e in result]
        return table(rows, [("at", "AT"), ("what", "EVENT"), ("ms", "MS"), ("outcome", "OUTCOME")])
    if command == "release":
        if not result["found"]:
            return f"{result['mac']}: not in the host namespace; claim of endpoint " \
                   f"{short(result['endpoint'])} dropped"
        tail = f" (problems: {'; '.join(result['problems'])})" if result["problems"] else ""
        return f"{result['mac']}: released from endpoint {short(result['endpoint'])}" \
               f"{', restored' if result['restored'] else ''}{tail}"
    if command == "network-rm":
        return f"network {short(result['id'])} removed; free again: {', '.join(result['freed'])}"
    return json.dumps(result, indent=2)


METHODS = {"status": "status", "networks": "networks.list", "endpoints": "endpoints.list",
           "nics": "nics.list", "events": "events.recent", "release": "nics.release",
           "network-rm": "networks.delete"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostnic-ctl", description=__doc__.splitlines()[0])
    parser.add_argument("--admin", default=DEFAULT_ADMIN,
                        help=f"unix socket path or tcp:HOST:PORT (default {DEFAULT_ADMIN})")
    parser.add_argument("--token-file", help="bearer token for a TCP admin endpoint")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("status", "networks", "endpoints", "nics"):
        commands.add_parser(name)
    events = commands.add_parser("events")
    events.add_argument("-n", "--limit", type=int, default=50)
    release = commands.add_parser("release", help="hand back a NIC whose claim outlived "
                                                  "its container")
    release.add_argument("mac")
    network_rm = commands.add_parser(
        "network-rm", help="remove a network dockerd does not know (a create cut short by a "
                           "restart), so its NICs can serve another network")
    network_rm.add_argument("id")
    args = parser.parse_args(argv)
    try:
        token = None
        if args.token_file:
            try:
                with open(args.token_file) as f:
                    token = f.read().strip()
            except OSError as e:
                raise CtlError(f"cannot read --token-file {args.token_file}: {e.strerror}") from None
        params = {"limit": args.limit} if args.command == "events" else \
            {"mac": args.mac} if args.command == "release" else \
            {"id": args.id} if args.command == "network-rm" else {}
        result = call(args.admin, METHODS[args.command], params, token)
    except CtlError as e:
        print(f"hostnic-ctl: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(args.command, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
