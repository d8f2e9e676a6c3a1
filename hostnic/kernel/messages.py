"""pyroute2's rtnetlink message classes (``ifinfmsg``, ``ifaddrmsg``,
``rtmsg``), without the rest of pyroute2.

Importing any pyroute2 module runs the package's ``__init__``, which loads
its whole API (IPRoute, NDB, their asyncio machinery): ~190 modules and
~10 MiB. hostnic encodes change requests with the message classes alone
(~30 modules, ~1 MiB) and sends them on its own socket. So unless pyroute2
is loaded already, its package is entered as a bare package (its modules
are found on its path as usual) and the message modules are imported from
it. A later ``import pyroute2.iproute`` in this process still works;
``from pyroute2 import IPRoute`` would not, and nothing in hostnic does it.
"""

from __future__ import annotations

import importlib.util
import sys
import types

if "pyroute2" not in sys.modules:
    _spec = importlib.util.find_spec("pyroute2")
    if _spec is None or _spec.submodule_search_locations is None:
        raise ImportError("pyroute2 is not installed")
    _package = types.ModuleType("pyroute2", "pyroute2, entered for its message classes")
    _package.__path__ = list(_spec.submodule_search_locations)
    _package.__spec__ = _spec
    sys.modules["pyroute2"] = _package

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402

__all__ = ["ifaddrmsg", "ifinfmsg", "rtmsg"]
