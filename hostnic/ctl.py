"""hostnic-ctl: ask a running hostnic what it holds, over its admin API.

Plain standard library (no Twisted), so it starts fast and fails in one line.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import socket
import ssl
import sys
import time
from typing import Any, Sequence

from hostnic import strictjson
from hostnic.endpoints import parse_endpoint
from hostnic.errors import InvalidOption
from hostnic.state.model import normalize_pci

DEFAULT_ADMIN = "/run/hostnic/admin.sock"
# A managed plugin's admin socket, in the socket directory dockerd gives it
# (/run/docker/plugins on the inside, /run/docker/plugins/<plugin id>/ here).
PLUGIN_ADMIN = "hostnic-admin.sock"


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


def connection(admin: str, timeout: float = 30, ca_file: str | None = None
               ) -> http.client.HTTPConnection:
    """A connection to the admin API named as the daemon's ``--admin`` names
    it (``unix:PATH:mode=600``, ``tcp:PORT:interface=HOST``, ``ssl:...``), or
    as a client does (a socket path, ``tcp:HOST:PORT``)."""
    if ":" not in admin:
        return UnixHTTPConnection(admin, timeout)
    endpoint = parse_endpoint(admin)
    kind, args, options = endpoint.kind, endpoint.args, endpoint.options
    if kind == "unix":
        path = endpoint.unix_path
        if not path:
            raise CtlError(f"--admin {admin!r}: no socket path")
        return UnixHTTPConnection(path, timeout)
    if kind in ("tcp", "tcp6", "ssl", "tls"):
        if len(args) == 2 and not args[0].isdigit():  # the client's tcp:HOST:PORT
            host, port = args
        else:  # the daemon's tcp:PORT:interface=HOST
            port = options.get("port") or (args[0] if args else "")
            host = options.get("interface", "")
        if not port.isdigit():
            raise CtlError(f"--admin {admin!r}: no port (tcp:PORT:interface=HOST, "
                           f"or tcp:HOST:PORT)")
        if host in ("", "0.0.0.0", "::"):  # listening everywhere: ask it here
            host = "::1" if kind == "tcp6" else "127.0.0.1"
        if kind in ("ssl", "tls"):
            context = ssl.create_default_context(cafile=ca_file)
            return http.client.HTTPSConnection(host, int(port), timeout=timeout,
                                               context=context)
        return http.client.HTTPConnection(host, int(port), timeout=timeout)
    if kind == "systemd":
        raise CtlError(f"--admin {admin!r} is a socket systemd hands to hostnic; give the "
                       f"path or port that socket unit listens on")
    raise CtlError(f"--admin {admin!r}: use a unix socket path, unix:PATH, "
                   f"tcp:PORT:interface=HOST or tcp:HOST:PORT")


def answers(path: str) -> bool:
    """Whether a unix socket accepts connections (a file left by a hostnic
    that is gone does not)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def default_admin(run: str = "/run") -> str:
    """The .deb's admin socket, else the managed plugin's (one hostnic serves
    a host, so one of them answers, or none)."""
    legacy = os.path.join(run, "hostnic", "admin.sock")
    if answers(legacy):
        return legacy
    plugins = [path for path in sorted(glob.glob(os.path.join(run, "docker", "plugins", "*",
                                                              PLUGIN_ADMIN)))
               if answers(path)]
    if len(plugins) > 1:
        raise CtlError(f"several managed hostnic plugins answer here "
                       f"({', '.join(plugins)}); choose one with --admin")
    return plugins[0] if plugins else legacy  # none: the error names the usual one


def call(admin: str, method: str, params: dict[str, Any] | None = None,
         token: str | None = None, ca_file: str | None = None) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = connection(admin, ca_file=ca_file)
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
        answer = strictjson.loads(raw)
    except strictjson.NotJSON:
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
        # Docker's endpoints and CNI's attachments (a container's interface).
        rows = [{**e, "owner": e.get("owner", "docker"),
                 "endpoint": (f"{short(e['cni']['container_id'])}/{e['cni']['ifname']}"
                              if e.get("cni") else short(e["endpoint"])),
                 "network": e["cni"]["network"] if e.get("cni") else short(e["network"]),
                 "joined": when(e["joined_at"]),
                 "was": (e["original"] or {}).get("name")} for e in result]
        return table(rows, [("owner", "OWNER"), ("endpoint", "ENDPOINT"),
                            ("network", "NETWORK"), ("mac", "MAC"), ("was", "HOST NAME"),
                            ("phase", "PHASE"), ("joined", "JOINED"),
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
    if command == "metrics":
        rows = [{"method": method, "count": m["count"], "errors": m["errors"],
                 "mean": f"{m['seconds_total'] / m['count'] * 1000:.2f}" if m["count"] else None}
                for method, m in sorted(result.items())]
        return table(rows, [("method", "METHOD"), ("count", "CALLS"), ("errors", "ERRORS"),
                            ("mean", "MEAN MS")])
    if command == "network":
        return describe_network(result)
    if command == "nic":
        return describe_nic(result)
    if command == "network-rm":
        return f"network {short(result['id'])} removed; free again: {', '.join(result['freed'])}"
    return json.dumps(result, indent=2)


def fields(pairs: Sequence[tuple[str, Any]]) -> list[str]:
    """``label: value`` lines, aligned; lists comma-joined, None as ``-``."""
    width = max(len(label) for label, _ in pairs) + 1
    lines = []
    for label, value in pairs:
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "-"
        lines.append(f"{label + ':':<{width}} {'-' if value is None else value}")
    return lines


def adopted_lines(adopted: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    if adopted is None:
        return []
    return [indent + line for line in fields([
        ("addresses", [a for a in (adopted["address4"], adopted["address6"]) if a]),
        ("gateways", [g for g in (adopted["gateway4"], adopted["gateway6"]) if g]),
        ("routes", adopted["routes"]), ("not carried", adopted["not_carried"])])]


def describe_network(network: dict[str, Any]) -> str:
    lines = fields([("network", network["id"]), ("mode", network["mode"]),
                    ("gateways", [g for g in (network["gateway4"], network["gateway6"]) if g]),
                    ("subnets", network["subnets"]),
                    ("options", [f"{k}={v}" for k, v in network["options"].items()])])
    for nic in network["pool"]:
        user = f"endpoint {short(nic['endpoint'])}" if nic["endpoint"] else "free"
        lines.append(f"NIC {nic['mac']} ({nic['name'] or 'not home'}): {user}")
        lines += adopted_lines(nic["adopted"])
    return "\n".join(lines)


def describe_nic(nic: dict[str, Any]) -> str:
    lines = fields([("name", nic["name"]), ("mac", nic["mac"]),
                    ("kind", nic["driver"] or nic["kind"]), ("pci", nic["pci"]),
                    ("mtu", nic["mtu"]), ("admin/oper", f"{nic['admin'] or '-'}/"
                                                        f"{nic['oper'] or '-'}"),
                    ("status", nic["status"]), ("network", nic["network"]),
                    ("endpoint", nic["endpoint"]), ("addresses", nic["addresses"])])
    recorded = nic.get("recorded")
    if recorded:
        lines.append(f"recorded at the lend ({when(recorded['recorded_at'])}), to restore:")
        lines += ["  " + line for line in fields([
            ("name", recorded["name"]), ("mtu", recorded["mtu"]), ("admin", recorded["admin"]),
            ("addresses", recorded["addresses"]), ("routes", recorded["routes"]),
            ("alias", recorded["alias"]), ("altnames", recorded["altnames"]),
            ("txqueuelen", recorded["txqlen"]), ("group", recorded["group"]),
            ("sysctls", f"{len(recorded['sysctls'])} (see --json)")])]
    if nic.get("adopted"):
        lines.append("adopt mode hands a container:")
        lines += adopted_lines(nic["adopted"])
    restore = nic.get("last_restore")
    if restore:
        problems = restore.get("problems") or []
        lines.append(f"last restore ({when(restore.get('at'))}): "
                     + ("complete" if not problems else "not restored: " + "; ".join(problems)))
    return "\n".join(lines)


METHODS = {"status": "status", "networks": "networks.list", "endpoints": "endpoints.list",
           "nics": "nics.list", "events": "events.recent", "release": "nics.release",
           "network-rm": "networks.delete", "network": "networks.get", "nic": "nics.get",
           "metrics": "metrics"}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    # The options are accepted before and after the verb: each verb's parser
    # has them too, with no defaults of its own to clobber the main parser's.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--admin", help=f"the daemon's --admin endpoint string "
                                        f"(unix:PATH:..., tcp:PORT:interface=HOST, ssl:...), "
                                        f"a socket path, or tcp:HOST:PORT "
                                        f"(default {DEFAULT_ADMIN}, else a managed "
                                        f"plugin's /run/docker/plugins/ID/{PLUGIN_ADMIN})")
    common.add_argument("--token-file", help="bearer token for a TCP admin endpoint")
    common.add_argument("--ca-file", help="CA certificates that sign an ssl: endpoint's")
    common.add_argument("--json", action="store_true", help="print the raw JSON result")
    parser = argparse.ArgumentParser(prog="hostnic-ctl", description=__doc__.splitlines()[0],
                                     parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("status", "the daemon's health and counts"),
                       ("networks", "every network hostnic holds"),
                       ("endpoints", "every endpoint and the NIC it holds"),
                       ("nics", "every NIC of the host and every NIC hostnic holds"),
                       ("metrics", "calls per driver method: count, errors, time")):
        commands.add_parser(name, parents=[common], help=what)
    network = commands.add_parser("network", parents=[common],
                                  help="one network: its pool and what each NIC brings")
    network.add_argument("id", help="network ID or a unique prefix of it")
    nic = commands.add_parser("nic", parents=[common],
                              help="one NIC: its state, what was recorded, the last restore")
    nic.add_argument("key", help="MAC address, PCI address or interface name")
    events = commands.add_parser("events", parents=[common], help="recent calls and events")
    events.add_argument("-n", "--limit", type=int, default=50)
    release = commands.add_parser("release", parents=[common],
                                  help="hand back a NIC whose claim outlived its container")
    release.add_argument("mac", metavar="NIC",
                         help="its MAC, or the PCI address it was pooled by")
    network_rm = commands.add_parser(
        "network-rm", parents=[common],
        help="remove a network dockerd does not know (a create cut short by a restart), "
             "so its NICs can serve another network")
    network_rm.add_argument("id")
    args = parser.parse_args(argv)
    # Defaults last: set_defaults would reach the verbs' parsers through the
    # option objects they share, and a verb would reset what came before it.
    for name, default in (("admin", None), ("token_file", None), ("ca_file", None),
                          ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def release_params(key: str) -> dict[str, str]:
    """nics.release's parameters: a PCI address is sent as one, anything else as
    a MAC (the daemon says what it cannot read)."""
    try:
        normalize_pci(key)
    except InvalidOption:
        return {"mac": key}
    return {"pci": key}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        token = None
        if args.token_file:
            try:
                with open(args.token_file) as f:
                    token = f.read().strip()
            except OSError as e:
                raise CtlError(f"cannot read --token-file {args.token_file}: {e.strerror}") from None
        params = {"events": lambda: {"limit": args.limit}, "release": lambda: release_params(args.mac),
                  "network-rm": lambda: {"id": args.id}, "network": lambda: {"id": args.id},
                  "nic": lambda: {"key": args.key}}.get(args.command, dict)()
        result = call(args.admin or default_admin(), METHODS[args.command], params, token,
                      args.ca_file)
    except CtlError as e:
        print(f"hostnic-ctl: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(args.command, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
