"""The JSON form of hostnic's state, checked field by field when read.

A state file that does not have exactly the expected shape is refused with
the place of the first problem (``networks[0].pool[1]: ...``): hostnic never
starts on a half-understood record of the NICs it lent.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, TypeVar

import attrs

from hostnic import strictjson
from hostnic.errors import InvalidOption
from hostnic.strictjson import NotJSON
from hostnic.state.model import (Address, Adopted, Attachment, Claim, Network, NicRef, NicState,
                                 Phase, Route, State, normalize_mac, normalize_pci)

# 1: pools and claims held bare MACs; 2: a NIC is its MAC and permanent
# address; 3: and its PCI address. Every earlier version is read.
FORMAT_VERSION = 3
READS = (1, 2, 3)
T = TypeVar("T")


class StateFileError(ValueError):
    """The file's content is not a state hostnic wrote; ``str()`` names where."""


def _nic(ref: NicRef) -> dict[str, Any]:
    return {"mac": ref.mac, "perm": ref.perm, "pci": ref.pci}


def _plain(value: Any) -> Any:
    """attrs values (and their tuples) as JSON-ready lists and dicts.

    A claim's record of its NIC (~100 sysctls, its addresses and routes) is
    written again with each of the claim's phases, unchanged: the record is
    immutable, so its plain form is kept for the next time. Callers never
    change what they get."""
    if value is None:
        return None
    held = _PLAIN.get(id(value))
    if held is not None and held[0] is value:  # (holding it keeps its id unique)
        return held[1]
    plain = attrs.asdict(value)  # tuples become lists
    if len(_PLAIN) >= _PLAIN_HELD:
        _PLAIN.clear()
    _PLAIN[id(value)] = (value, plain)
    return plain


_PLAIN: dict[int, tuple[Any, Any]] = {}
_PLAIN_HELD = 256  # records of NICs lent at once, and then some


def network_json(n: Network) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": n.id, "pool": [_nic(ref) for ref in n.pool], "gateway4": n.gateway4,
        "gateway6": n.gateway6, "subnets": list(n.subnets), "options": dict(n.options)}
    if n.adopt:
        data.update(adopt=True, ipv6=n.ipv6,
                    adopted={mac: _plain(a) for mac, a in n.adopted.items()})
    return data


def claim_json(c: Claim) -> dict[str, Any]:
    data = {"endpoint_id": c.endpoint_id, "network_id": c.network_id, "nic": _nic(c.nic),
            "phase": c.phase.value, "original": _plain(c.original),
            "sandbox_key": c.sandbox_key, "created_at": c.created_at, "joined_at": c.joined_at}
    if c.adopted is not None:
        data["adopted"] = _plain(c.adopted)
    if c.attachment is not None:
        data["attachment"] = attrs.asdict(c.attachment)
    return data


def encode(state: State, generation: int = 0) -> bytes:
    """The snapshot file: the whole state, and which journal continues it."""
    data = {"version": FORMAT_VERSION, "generation": generation,
            "networks": [network_json(n) for n in state.networks.values()],
            "claims": [claim_json(c) for c in state.claims.values()]}
    return json.dumps(data, indent=1, sort_keys=True, allow_nan=False).encode()


def decode(raw: bytes) -> State:
    return decode_snapshot(raw)[0]


def decode_snapshot(raw: bytes) -> tuple[State, int]:
    """The state and the generation of the journal that continues it."""
    data = _json(raw)
    reader = _Reader()
    top = reader.object(data, "the file")
    version = top.get("version")
    if version not in READS:
        raise StateFileError(f"version: {version!r} is not a format this hostnic reads "
                             f"({', '.join(map(str, READS))})")
    generation = top.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise StateFileError(f"generation: {generation!r} is not a journal generation")
    networks = reader.items(top, "networks", lambda n, at: reader.network(n, at, version))
    claims = reader.items(top, "claims", lambda c, at: reader.claim(c, at, version))
    by_id = {n.id: n for n in networks}
    if len(by_id) != len(networks):
        raise StateFileError("networks: a network id appears twice")
    by_endpoint = {c.endpoint_id: c for c in claims}
    if len(by_endpoint) != len(claims):
        raise StateFileError("claims: an endpoint id appears twice")
    return State(networks=by_id, claims=by_endpoint), generation


# -- journal records: one change each ----------------------------------------

def changes(before: State, after: State) -> list[dict[str, Any]]:
    """The records that turn ``before`` into ``after`` (objects are immutable
    and a change replaces one: identity settles most comparisons at once)."""
    records: list[dict[str, Any]] = []
    for key, network in after.networks.items():
        held = before.networks.get(key)
        if held is not network and held != network:
            records.append({"put": "network", "value": network_json(network)})
    for key, claim in after.claims.items():
        had = before.claims.get(key)
        if had is not claim and had != claim:
            records.append({"put": "claim", "value": claim_json(claim)})
    records += [{"drop": "network", "id": key} for key in before.networks
                if key not in after.networks]
    records += [{"drop": "claim", "id": key} for key in before.claims if key not in after.claims]
    return records


def encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, allow_nan=False, separators=(",", ":")).encode()


def apply_record(state: State, raw: bytes, at: str) -> State:
    reader = _Reader()
    record = reader.object(_json(raw), at)
    kind = record.get("put") or record.get("drop")
    if kind not in ("network", "claim"):
        raise StateFileError(f"{at}: not a change hostnic writes")
    if "drop" in record:
        key = reader.text(record, "id", at)
        return state.without_network(key) if kind == "network" else state.without_claim(key)
    if kind == "network":
        return state.with_network(reader.network(record.get("value"), f"{at}.value",
                                                 FORMAT_VERSION))
    return state.with_claim(reader.claim(record.get("value"), f"{at}.value", FORMAT_VERSION))


def _json(raw: bytes) -> Any:
    try:
        return strictjson.loads(raw)
    except NotJSON as e:
        raise StateFileError("it is nested too deeply to be a state file" if e.deep
                             else f"it is not JSON ({e.detail})") from None


class _Reader:
    """Typed accessors that name the place of every problem."""

    def object(self, value: Any, at: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise StateFileError(f"{at}: expected an object, found {_kind(value)}")
        return value

    def field(self, obj: Mapping[str, Any], key: str, kinds: tuple[type, ...], at: str,
              optional: bool = False) -> Any:
        value = obj.get(key)
        if value is None:
            if optional:
                return None
            raise StateFileError(f"{at}.{key}: missing")
        # bool is an int to Python, never to this file.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise StateFileError(f"{at}.{key}: expected {names}, found {_kind(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise StateFileError(f"{at}.{key}: not a finite number")
        return value

    def text(self, obj: Mapping[str, Any], key: str, at: str, optional: bool = False) -> Any:
        return self.field(obj, key, (str,), at, optional)

    def items(self, obj: Mapping[str, Any], key: str, read: Callable[[Any, str], T],
              at: str = "") -> list[T]:
        where = f"{at}.{key}" if at else key
        values = obj.get(key, [])
        if not isinstance(values, list):
            raise StateFileError(f"{where}: expected a list, found {_kind(values)}")
        return [read(value, f"{where}[{i}]") for i, value in enumerate(values)]

    def normal(self, value: Any, at: str, what: str, normalize: Callable[[str], str]) -> str:
        """A string in its canonical form, or the place and why not."""
        if not isinstance(value, str):
            raise StateFileError(f"{at}: expected {what}, found {_kind(value)}")
        try:
            return normalize(value)
        except InvalidOption as e:
            raise StateFileError(f"{at}: {e.message}") from None

    def mac(self, value: Any, at: str) -> str:
        return self.normal(value, at, "a MAC address", normalize_mac)

    def nic(self, value: Any, at: str, version: int) -> NicRef:
        if version == 1:
            return NicRef(self.mac(value, at))
        obj = self.object(value, at)
        perm, pci = obj.get("perm"), obj.get("pci") if version >= 3 else None
        return NicRef(self.mac(obj.get("mac"), f"{at}.mac"),
                      None if perm is None else self.mac(perm, f"{at}.perm"),
                      None if pci is None else self.pci(pci, f"{at}.pci"))

    def pci(self, value: Any, at: str) -> str:
        return self.normal(value, at, "a PCI address", normalize_pci)

    def network(self, value: Any, at: str, version: int) -> Network:
        obj = self.object(value, at)
        pool = obj.get("pool")
        if not isinstance(pool, list) or not pool:
            raise StateFileError(f"{at}.pool: expected a non-empty list of NICs, "
                                 f"found {_kind(pool)}")
        options = self.object(obj.get("options", {}), f"{at}.options")
        for key, option in options.items():
            if not isinstance(option, str):
                raise StateFileError(f"{at}.options.{key}: expected str, found {_kind(option)}")
        subnets = obj.get("subnets", [])
        if not isinstance(subnets, list) or not all(isinstance(s, str) for s in subnets):
            raise StateFileError(f"{at}.subnets: expected a list of strings")
        adopted = self.object(obj.get("adopted", {}), f"{at}.adopted")
        return Network(
            id=self.text(obj, "id", at),
            pool=tuple(self.nic(v, f"{at}.pool[{i}]", version) for i, v in enumerate(pool)),
            gateway4=self.text(obj, "gateway4", at, optional=True),
            gateway6=self.text(obj, "gateway6", at, optional=True),
            subnets=tuple(subnets), options=dict(options),
            adopt=bool(self.field(obj, "adopt", (bool,), at, optional=True)),
            ipv6=bool(self.field(obj, "ipv6", (bool,), at, optional=True)),
            adopted={self.mac(mac, f"{at}.adopted"): self.adopted(a, f"{at}.adopted.{mac}")
                     or Adopted() for mac, a in adopted.items()})

    def number(self, obj: Mapping[str, Any], key: str, at: str, optional: bool = False) -> Any:
        return self.field(obj, key, (int,), at, optional)

    def address(self, value: Any, at: str) -> Address:
        entry = self.object(value, at)
        return Address(family=self.number(entry, "family", at),
                       address=self.text(entry, "address", at),
                       prefixlen=self.number(entry, "prefixlen", at),
                       flags=self.number(entry, "flags", at, optional=True) or 0,
                       label=self.text(entry, "label", at, optional=True),
                       valid=self.number(entry, "valid", at, optional=True),
                       preferred=self.number(entry, "preferred", at, optional=True),
                       scope=self.number(entry, "scope", at, optional=True) or 0,
                       broadcast=self.text(entry, "broadcast", at, optional=True))

    def route(self, value: Any, at: str) -> Route:
        entry = self.object(value, at)
        return Route(family=self.number(entry, "family", at),
                     dst=self.text(entry, "dst", at, optional=True),
                     dst_len=self.number(entry, "dst_len", at),
                     gateway=self.text(entry, "gateway", at, optional=True),
                     table=self.number(entry, "table", at),
                     priority=self.number(entry, "priority", at, optional=True),
                     protocol=self.number(entry, "protocol", at),
                     scope=self.number(entry, "scope", at),
                     type=self.number(entry, "type", at),
                     prefsrc=self.text(entry, "prefsrc", at, optional=True))

    def pairs(self, obj: Mapping[str, Any], key: str, at: str) -> tuple[tuple[str, str], ...]:
        pairs = []
        for entry, where in self.items(obj, key, lambda v, w: (v, w), at):
            if not (isinstance(entry, list) and len(entry) == 2
                    and all(isinstance(x, str) for x in entry)):
                raise StateFileError(f"{where}: expected a [name, value] pair of strings")
            pairs.append((entry[0], entry[1]))
        return tuple(pairs)

    def recorded(self, value: Any, at: str) -> NicState | None:
        if value is None:
            return None
        obj = self.object(value, at)
        altnames = obj.get("altnames", [])
        if not isinstance(altnames, list) or not all(isinstance(a, str) for a in altnames):
            raise StateFileError(f"{at}.altnames: expected a list of names")
        return NicState(
            name=self.text(obj, "name", at), mac=self.text(obj, "mac", at),
            mtu=self.number(obj, "mtu", at), up=self.field(obj, "up", (bool,), at),
            addresses=tuple(self.items(obj, "addresses", self.address, at)),
            routes=tuple(self.items(obj, "routes", self.route, at)),
            sysctls=self.pairs(obj, "sysctls", at),
            alias=self.text(obj, "alias", at, optional=True), altnames=tuple(altnames),
            txqlen=self.number(obj, "txqlen", at, optional=True),
            group=self.number(obj, "group", at, optional=True),
            recorded_at=self.field(obj, "recorded_at", (int, float), at, optional=True) or 0.0,
            index=self.number(obj, "index", at, optional=True))

    def adopted(self, value: Any, at: str) -> Adopted | None:
        if value is None:
            return None
        obj = self.object(value, at)

        def one(key: str) -> Address | None:
            return None if obj.get(key) is None else self.address(obj[key], f"{at}.{key}")

        return Adopted(address4=one("address4"), address6=one("address6"),
                       gateway4=self.text(obj, "gateway4", at, optional=True),
                       gateway6=self.text(obj, "gateway6", at, optional=True),
                       routes=tuple(self.items(obj, "routes", self.route, at)),
                       not_carried=tuple(self.items(obj, "not_carried", self.address, at)),
                       read_at=self.field(obj, "read_at", (int, float), at, optional=True)
                       or 0.0)

    def claim(self, value: Any, at: str, version: int) -> Claim:
        obj = self.object(value, at)
        phase_name = self.text(obj, "phase", at)
        try:
            phase = Phase(phase_name)
        except ValueError:
            raise StateFileError(f"{at}.phase: {phase_name!r} is not a phase") from None
        nic = (self.nic(obj.get("mac"), f"{at}.mac", 1) if version == 1
               else self.nic(obj.get("nic"), f"{at}.nic", version))
        original = self.recorded(obj.get("original"), f"{at}.original")
        if phase is not Phase.CREATED and original is None:
            raise StateFileError(f"{at}.original: a {phase.value} claim must record the "
                                 f"NIC's original state")
        return Claim(
            endpoint_id=self.text(obj, "endpoint_id", at),
            network_id=self.text(obj, "network_id", at), nic=nic, phase=phase,
            original=original, sandbox_key=self.text(obj, "sandbox_key", at, optional=True),
            created_at=self.field(obj, "created_at", (int, float), at, optional=True) or 0.0,
            joined_at=self.field(obj, "joined_at", (int, float), at, optional=True),
            adopted=self.adopted(obj.get("adopted"), f"{at}.adopted"),
            attachment=self.attachment(obj.get("attachment"), f"{at}.attachment"))

    def attachment(self, value: Any, at: str) -> Attachment | None:
        if value is None:
            return None
        obj = self.object(value, at)
        return Attachment(network=self.text(obj, "network", at),
                          container_id=self.text(obj, "container_id", at),
                          ifname=self.text(obj, "ifname", at))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__
