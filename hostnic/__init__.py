"""hostnic: a Docker network driver that hands a real host NIC to a container."""

__version__ = "0.1.0"
