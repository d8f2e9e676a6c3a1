"""The old name of ``hostnic.daemon.journald``, kept so that an existing
``twistd --logger hostnic.journald.observer`` (a unit drop-in written for an
earlier hostnic) goes on working."""

from hostnic.daemon.journald import observer

__all__ = ["observer"]
