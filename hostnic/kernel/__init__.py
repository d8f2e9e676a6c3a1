"""The host network namespace through netlink: raw reads, the link
monitor and its inventory, a NIC's whole record, changes as pyroute2's messages,
and the host port the core uses, implemented over them."""
