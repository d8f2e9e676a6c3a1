"""The front ends over the core: the libnetwork remote driver, the
JSON-RPC admin API, their HTTP plumbing and their views."""
