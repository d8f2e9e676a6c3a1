"""The daemon: the twistd service, the composition root, socket activation,
one hostnic per host, sd_notify and journald."""
