"""Twisted's endpoint strings (``unix:/run/h.sock:mode=600``,
``tcp:9123:interface=127.0.0.1``, ``systemd:domain=UNIX:name=hostnic.sock``),
read once for everything hostnic asks of them: the daemon (is it on the
network? which socket file?) and hostnic-ctl (where to connect)."""

from __future__ import annotations

from typing import Mapping

import attrs

NETWORK_KINDS = ("tcp", "tcp6", "ssl", "tls")


@attrs.frozen
class Endpoint:
    kind: str  # lower case: unix, tcp, tcp6, ssl, tls, systemd, ...
    args: tuple[str, ...]  # the positional fields
    options: Mapping[str, str]  # the key=value fields, keys in lower case

    @property
    def unix_path(self) -> str | None:
        """The socket file of a ``unix:`` endpoint."""
        if self.kind != "unix":
            return None
        return self.options.get("address") or (self.args[0] if self.args else None)

    @property
    def on_the_network(self) -> bool:
        """Whether anyone who can reach the host could connect: TCP, TLS, or
        a socket systemd opened on an INET domain."""
        return self.kind in NETWORK_KINDS or (
            self.kind == "systemd" and self.options.get("domain", "").upper().startswith("INET"))


def parse_endpoint(description: str) -> Endpoint:
    """Its kind and fields (``\\:`` escapes a colon, as in
    ``tcp6:9123:interface=\\:\\:1``)."""
    fields, current, escaped = [], "", False
    for char in description:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    args, options = [], {}
    for field in fields[1:]:
        key, equals, value = field.partition("=")
        if equals:
            options[key.lower()] = value
        else:
            args.append(field)
    return Endpoint(fields[0].lower(), tuple(args), options)
