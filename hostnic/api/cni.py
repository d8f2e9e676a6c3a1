"""The CNI front end: a runtime's command (the ``CNI_*`` environment and the
network configuration, forwarded by the ``hostnic-cni`` shim with the
namespace it hands over) parsed into the core's commands, and the core's
answers written back as CNI results and errors (spec 1.1; results in 0.4.0,
1.0.0 or 1.1.0).

A request is ``{"env": {...}, "config": {...}, "ipam": RESULT-or-null}``:
the shim runs the IPAM plugin itself (it has the runtime's environment and
``CNI_PATH``) and forwards its result. The answer is ``(exit status,
output)``: the result, or ``{"cniVersion", "code", "msg", "details"}``.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

import netaddr
from twisted.logger import Logger

from hostnic.core.commands import (AttachNic, Attached, CheckAttachment, CollectAttachments,
                                   DetachNic, InsideConfig, NicChoice)
from hostnic.core.narration import telling
from hostnic.core.owner import Core
from hostnic.core.ports import Sandbox
from hostnic.errors import (HostError, HostnicError, NicUnavailable, PoolExhausted, StoreError,
                            UnknownObject)
from hostnic.sentences import capped, quoted
from hostnic.state.model import (AF_INET, AF_INET6, Address, Attachment, Route, normalize_mac,
                                 normalize_pci, valid_ifname)

log = Logger()
VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")  # (VERSION: the shim answers it)
# The spec's error codes, and hostnic's own (100 and up).
INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER = 1, 2, 3
INVALID_ENVIRONMENT, IO_FAILURE, DECODING_FAILURE, INVALID_CONFIG = 4, 5, 6, 7
TRY_AGAIN_LATER, NOT_AVAILABLE = 11, 50
NIC_UNAVAILABLE, HOST_FAILURE, CHECK_FAILED, INTERNAL = 100, 101, 102, 199
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
MAX_MTU = 65535

# The core's refusals as CNI error codes (the first kind that matches).
REFUSALS: tuple[tuple[type[HostnicError], int], ...] = (
    (PoolExhausted, NIC_UNAVAILABLE),
    (NicUnavailable, NIC_UNAVAILABLE),
    (HostError, HOST_FAILURE),
    (StoreError, TRY_AGAIN_LATER),
    (UnknownObject, UNKNOWN_CONTAINER),
    (HostnicError, INVALID_CONFIG),
)

# Makes the namespace the shim handed over into the host port's handle
# (``key``: CNI_NETNS; the descriptors: the namespace and a netlink socket
# made inside it); the daemon's composition root supplies the kernel's.
OpenSandbox = Callable[[str, Sequence[int]], Sandbox]


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _invalid(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, msg)


def _strings(value: Any, where: str) -> list[str]:
    """A string (comma-separated, as in Docker's options) or a list of them."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise _invalid(f"{where} must be a string or a list of strings")


SELECTORS = ("mac", "device", "pci")  # ("name" is the network's, in CNI)


def choice_of(config: Mapping[str, Any]) -> NicChoice:
    """The NICs a network configuration names: ``mac``, ``device`` (an
    interface name, as CNI's host-device plugin calls it) and ``pci``, each a
    string (comma-separated, as in hostnic's Docker options) or a list, and
    ``pool``: a list of objects with one of those keys each."""
    macs: list[str] = []
    names: list[str] = []
    pcis: list[str] = []
    entries: list[tuple[str, Any, str]] = [(key, config[key], key)
                                           for key in SELECTORS if key in config]
    pool = config.get("pool")
    if pool is not None:
        if not isinstance(pool, list):
            raise _invalid("pool must be a list of {\"mac\"|\"device\"|\"pci\": ...} "
                           "objects")
        for i, entry in enumerate(pool):
            keys = [k for k in SELECTORS if isinstance(entry, dict) and k in entry]
            if not isinstance(entry, dict) or len(keys) != 1 or len(entry) != 1:
                raise _invalid(f"pool[{i}] must be an object with one of mac, device or pci")
            entries.append((keys[0], entry[keys[0]], f"pool[{i}].{keys[0]}"))
    try:
        for key, value, where in entries:
            for item in _strings(value, where):
                if key == "mac":
                    macs.append(normalize_mac(item))
                elif key == "pci":
                    pcis.append(normalize_pci(item))
                elif valid_ifname(item):
                    names.append(item)
                else:
                    raise _invalid(f"{where} {quoted(item)} is not an interface name")
    except HostnicError as e:  # (a MAC or PCI address that is not one)
        raise _invalid(f"{where}: {e.message}") from None
    if not macs and not names and not pcis:
        raise _invalid("the hostnic configuration names no NIC: give \"mac\", \"device\", "
                       "\"pci\" or a \"pool\" of them")
    return NicChoice(tuple(dict.fromkeys(macs)), tuple(dict.fromkeys(names)),
                     tuple(dict.fromkeys(pcis)))


def _ip(text: Any, where: str) -> netaddr.IPAddress:
    try:
        if isinstance(text, str) and len(text) <= 64:
            return netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        pass
    raise CNIError(DECODING_FAILURE, f"{where} {quoted(text)} is not an IP address")


def _net(text: Any, where: str) -> netaddr.IPNetwork:
    try:
        if isinstance(text, str) and len(text) <= 64 and "/" in text:
            return netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        pass
    raise CNIError(DECODING_FAILURE, f"{where} {quoted(text)} is not an address with a "
                                     f"prefix length")


def _objects(result: Mapping[str, Any], key: str, where: str
             ) -> list[tuple[str, dict[str, Any]]]:
    """``result[key]``'s entries, each an object, with where each is."""
    listed = result.get(key) or []
    if not isinstance(listed, list):
        raise CNIError(DECODING_FAILURE, f"{where}.{key} is not a list")
    for i, entry in enumerate(listed):
        if not isinstance(entry, dict):
            raise CNIError(DECODING_FAILURE, f"{where}.{key}[{i}] is not an object")
    return [(f"{where}.{key}[{i}]", entry) for i, entry in enumerate(listed)]


def inside_config(result: Mapping[str, Any], where: str) -> InsideConfig:
    """An IPAM result (or a prevResult): its addresses, gateways and routes."""
    if not isinstance(result, dict):
        raise CNIError(DECODING_FAILURE, f"{where} is not an object")
    addresses: list[Address] = []
    gateways: dict[int, str] = {}
    for at, entry in _objects(result, "ips", where):
        net = _net(entry.get("address"), f"{at}.address")
        family = AF_INET if net.version == 4 else AF_INET6
        addresses.append(Address(family, str(net.ip), net.prefixlen))
        if entry.get("gateway") is not None:
            gateways.setdefault(family, str(_ip(entry["gateway"], f"{at}.gateway")))
    routes: list[Route] = []
    for at, entry in _objects(result, "routes", where):
        dst = _net(entry.get("dst"), f"{at}.dst")
        gw = str(_ip(entry["gw"], f"{at}.gw")) if entry.get("gw") is not None else None
        routes.append(Route(AF_INET if dst.version == 4 else AF_INET6,
                            None if dst.prefixlen == 0 else str(dst.network), dst.prefixlen, gw))
    return InsideConfig(tuple(addresses), gateways.get(AF_INET), gateways.get(AF_INET6),
                        tuple(routes))


def result_json(version: str, attached: Attached, dns: Any) -> dict[str, Any]:
    """An ADD's result in the configuration's ``cniVersion``."""
    interface: dict[str, Any] = {"name": attached.ifname, "mac": attached.mac,
                                 "sandbox": attached.sandbox}
    if version == "1.1.0":
        interface["mtu"] = attached.mtu
        if attached.pci:
            interface["pciID"] = attached.pci
    config = attached.config
    ips = []
    for address in config.addresses:
        entry: dict[str, Any] = {"address": address.cidr, "interface": 0}
        gateway = config.gateway4 if address.family == AF_INET else config.gateway6
        if gateway:
            entry["gateway"] = gateway
        if version == "0.4.0":
            entry["version"] = "4" if address.family == AF_INET else "6"
        ips.append(entry)
    routes = []
    for route in config.routes:
        dst = route.dst or ("0.0.0.0" if route.family == AF_INET else "::")
        entry = {"dst": f"{dst}/{route.dst_len}"}
        if route.gateway:
            entry["gw"] = route.gateway
        routes.append(entry)
    return {"cniVersion": version, "interfaces": [interface], "ips": ips, "routes": routes,
            "dns": dns if isinstance(dns, dict) else {}}


def error_json(version: str, error: CNIError) -> dict[str, Any]:
    answer: dict[str, Any] = {"cniVersion": version, "code": error.code,
                              "msg": capped(error.msg)}
    if error.details:
        answer["details"] = capped(error.details)
    return answer


class CNIAPI:
    """Serves the shim's forwarded commands over the core."""

    def __init__(self, core: Core, open_sandbox: OpenSandbox,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.open_sandbox = open_sandbox
        self.clock = clock

    async def handle(self, request: Any, fds: Sequence[int]) -> tuple[int, dict[str, Any]]:
        """One command: ``(exit status, what the shim prints)``, counted and
        logged as the driver's calls are (``CNI.ADD``, ...)."""
        started = self.clock()
        with telling() as story:
            status, output = await self._handle(request, fds)
        env = request.get("env") if isinstance(request, dict) else None
        command = env.get("CNI_COMMAND") if isinstance(env, dict) else None
        method = f"CNI.{command}" if command in COMMANDS else "CNI.(unknown)"
        duration = self.clock() - started
        error = output.get("msg") if status else None
        self.core.events.record(method, duration, error)
        what = f": {'; '.join(story)}" if story else ""
        if error is None:
            log.info("{method} ok in {ms:.1f} ms{what}", method=method, ms=duration * 1000,
                     what=what, outcome="ok")
        else:
            log.warn("{method} refused in {ms:.1f} ms: {error}{what}", method=method,
                     ms=duration * 1000, error=error, what=what, outcome="refused")
        return status, output

    async def _handle(self, request: Any, fds: Sequence[int]) -> tuple[int, dict[str, Any]]:
        """Every failure is a CNI error; the descriptors are closed whatever
        happens."""
        version = "1.1.0"
        sandbox: Sandbox | None = None
        try:
            if not isinstance(request, dict) or not isinstance(request.get("env"), dict) \
                    or not isinstance(request.get("config"), dict):
                raise CNIError(DECODING_FAILURE, "the request must hold \"env\" and \"config\" "
                                                 "objects")
            env, config = request["env"], request["config"]
            asked = config.get("cniVersion")
            if isinstance(asked, str) and asked in VERSIONS:
                version = asked
            command = env.get("CNI_COMMAND")
            if command not in COMMANDS:
                raise CNIError(INVALID_ENVIRONMENT, f"CNI_COMMAND {quoted(command)} is not one "
                                                    f"hostnic serves here")
            self._check_version(asked)
            if fds:
                handed, fds = fds, ()  # (open_sandbox owns them: it closes them on failure)
                sandbox = self.open_sandbox(str(env.get("CNI_NETNS") or ""), handed)
            serve = {"ADD": self.add, "DEL": self.delete, "CHECK": self.check,
                     "GC": self.gc, "STATUS": self.status}[command]
            answer = await serve(version, env, config, request.get("ipam"), sandbox)
            return 0, answer
        except CNIError as e:
            return 1, error_json(version, e)
        except HostnicError as e:
            code = next(code for kind, code in REFUSALS if isinstance(e, kind))
            return 1, error_json(version, CNIError(code, e.message))
        except Exception as e:
            log.failure("CNI request failed")
            return 1, error_json(version, CNIError(
                INTERNAL, f"hostnic failed to process the request ({type(e).__name__}); "
                          f"see the hostnic log"))
        finally:
            for fd in fds:  # (not handed to a sandbox)
                _close(fd)
            if sandbox is not None and not self.core.holds_sandbox(sandbox):
                sandbox.close()  # (an attachment holds its ADD's until its DEL)

    @staticmethod
    def _check_version(asked: Any) -> None:
        if not isinstance(asked, str):
            raise _invalid("the configuration has no cniVersion")
        if asked not in VERSIONS:
            raise CNIError(INCOMPATIBLE_VERSION,
                           f"hostnic does not speak CNI {quoted(asked)}",
                           f"supported versions: {', '.join(VERSIONS)}")

    @staticmethod
    def _attachment(env: Mapping[str, Any], config: Mapping[str, Any]) -> Attachment:
        name = config.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("the configuration has no network name")
        container = env.get("CNI_CONTAINERID")
        if not isinstance(container, str) or not _CONTAINER_ID.match(container):
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_CONTAINERID {quoted(container)} is not a container ID")
        ifname = env.get("CNI_IFNAME")
        if not isinstance(ifname, str) or not valid_ifname(ifname):
            raise CNIError(INVALID_ENVIRONMENT,
                           f"CNI_IFNAME {quoted(ifname)} is not an interface name")
        return Attachment(name, container, ifname)

    @staticmethod
    def _handed(env: Mapping[str, Any], sandbox: Sandbox | None) -> Sandbox:
        """The namespace ADD and CHECK act in: the plugin must have handed it over."""
        if sandbox is None:
            raise CNIError(INVALID_ENVIRONMENT, f"no network namespace was handed over for "
                                                f"CNI_NETNS {quoted(env.get('CNI_NETNS'))}")
        return sandbox

    @staticmethod
    def _mtu(config: Mapping[str, Any]) -> int | None:
        mtu = config.get("mtu")
        if mtu is None:
            return None
        if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= MAX_MTU:
            raise _invalid(f"mtu {quoted(mtu)} is not an MTU (68 to {MAX_MTU})")
        return mtu

    @staticmethod
    def _adopt(config: Mapping[str, Any]) -> bool:
        adopt = config.get("adopt", False)
        if not isinstance(adopt, bool):
            raise _invalid("adopt must be true or false")
        if adopt and config.get("ipam"):
            raise _invalid("adopt hands the NIC's own addresses to the container: a "
                           "configuration with \"adopt\": true takes no ipam section")
        return adopt

    async def add(self, version: str, env: Mapping[str, Any], config: Mapping[str, Any],
                  ipam: Any, sandbox: Sandbox | None) -> dict[str, Any]:
        attachment = self._attachment(env, config)
        sandbox = self._handed(env, sandbox)
        adopt = self._adopt(config)
        inside = inside_config(ipam, "the IPAM result") if ipam else InsideConfig()
        attached = await self.core.attach(AttachNic(
            attachment=attachment, choice=choice_of(config), sandbox=sandbox,
            mtu=self._mtu(config), adopt=adopt, config=inside))
        return result_json(version, attached, ipam.get("dns") if isinstance(ipam, dict) else None)

    async def delete(self, version: str, env: Mapping[str, Any], config: Mapping[str, Any],
                     ipam: Any, sandbox: Sandbox | None) -> dict[str, Any]:
        await self.core.detach(DetachNic(self._attachment(env, config), sandbox))
        return {}

    async def check(self, version: str, env: Mapping[str, Any], config: Mapping[str, Any],
                    ipam: Any, sandbox: Sandbox | None) -> dict[str, Any]:
        attachment = self._attachment(env, config)
        sandbox = self._handed(env, sandbox)
        previous = config.get("prevResult")
        if not isinstance(previous, dict):
            raise _invalid("CHECK needs the ADD's result as prevResult")
        differences = await self.core.check_attachment(CheckAttachment(
            attachment, sandbox, self._mtu(config), inside_config(previous, "prevResult")))
        if differences:
            raise CNIError(CHECK_FAILED,
                           f"{attachment.ifname} of container {attachment.container_id[:12]} "
                           f"is not as attached", "; ".join(differences))
        return {}

    async def gc(self, version: str, env: Mapping[str, Any], config: Mapping[str, Any],
                 ipam: Any, sandbox: Sandbox | None) -> dict[str, Any]:
        name = config.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("the configuration has no network name")
        valid = config.get("cni.dev/valid-attachments", [])
        if not isinstance(valid, list) or not all(
                isinstance(v, dict) and isinstance(v.get("containerID"), str)
                and isinstance(v.get("ifname"), str) for v in valid):
            raise _invalid("cni.dev/valid-attachments must be a list of {containerID, "
                           "ifname} objects")
        collected = await self.core.collect_attachments(CollectAttachments(
            name, frozenset((v["containerID"], v["ifname"]) for v in valid)))
        # (for the plugin, which releases their addresses with the IPAM plugin)
        return {"collected": [{"containerID": a.container_id, "ifname": a.ifname}
                              for a in collected]}

    async def status(self, version: str, env: Mapping[str, Any], config: Mapping[str, Any],
                     ipam: Any, sandbox: Sandbox | None) -> dict[str, Any]:
        if not await self.core.has_free_nic(choice_of(config)):
            raise CNIError(NOT_AVAILABLE, "no NIC of this network is free and in the host "
                                          "network namespace")
        return {}


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
