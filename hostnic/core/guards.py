"""Which NICs hostnic will not lend, and why, in a sentence: pure functions
of what the host port reports of a link (``HostPort.inspect``). Checked when a
network is created and again at every lend: a host changes in between."""

from __future__ import annotations

from hostnic.state.model import LinkFacts, LinkInfo, NicRef


def shared_mac_lower(carriers: list[LinkInfo]) -> LinkInfo | None:
    """Of links sharing one MAC, the one the others were built on (the port
    of a bridge or bond among them, the parent of a VLAN), if it is one."""
    indexes = {link.index for link in carriers}
    lowers = [link for link in carriers
              if link.master in indexes
              or any(other.link == link.index and other.link_netnsid is None
                     for other in carriers)]
    return lowers[0] if len(lowers) == 1 else None


def refusal(nic: NicRef, facts: LinkFacts, again: bool = False) -> str | None:
    """Why the link of ``facts`` (which is ``nic``) must not be lent, or None."""
    link, master = facts.link, facts.master
    label = f"NIC {nic.mac} ({link.name})"
    if link.loopback:
        return f"{link.name} is the loopback interface"
    if link.master is not None:
        what = f"{master.kind or 'device'} {master.name}" if master else f"interface {link.master}"
        return (f"{label} is a port of {what}; lending it would cut "
                f"{master.name if master else 'it'} off")
    if facts.uppers:
        names = ", ".join(f"{upper.kind} {upper.name}" for upper in facts.uppers)
        return f"{label} carries {names}; lending it would cut them off"
    if facts.host_default:
        if again:
            return (f"{label} now carries the host's default route; handing it to a "
                    f"container would cut the host off")
        return (f"{label} carries the host's default route; it looks like the management "
                f"NIC and handing it to a container would cut the host off")
    return None
