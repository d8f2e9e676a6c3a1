"""The packages' layering, read from the imports (module level and inside
functions alike): what each layer may import, directly or through another
hostnic module."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parents[1] / "hostnic"
# Bottom to top: a layer imports only from layers below it (and its own).
LAYERS = {"hostnic": 0, "hostnic.errors": 0, "hostnic.sentences": 0,  # "hostnic": its version
          "hostnic.endpoints": 0, "hostnic.strictjson": 0,
          "hostnic.state": 1, "hostnic.kernel": 2, "hostnic.core": 2, "hostnic.api": 3,
          "hostnic.daemon": 4, "hostnic.ctl": 5, "hostnic.journald": 5,
          "hostnic.cnishim": 5}
# The core's wire-free rule, and the kernel's: side by side, neither sees the other.
FORBIDDEN = {
    "hostnic.core": ("klein", "twisted.web", "hostnic.api", "hostnic.kernel", "hostnic.daemon"),
    # The kernel implements the core's host port, and imports nothing else of it.
    "hostnic.kernel": ("hostnic.core.", "hostnic.api", "hostnic.daemon", "klein", "twisted.web"),
    "hostnic.state": ("hostnic.kernel", "hostnic.core", "hostnic.api", "hostnic.daemon",
                      "twisted.web", "klein", "pyroute2"),
}


ALLOWED = {"hostnic.core.ports"}  # the port the kernel implements


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from hostnic.kernel import record` imports hostnic.kernel.record
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layer(module: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or (prefix != "hostnic" and module.startswith(prefix + ".")):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer")


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        # (os.walk: other tests write __pycache__ directories while this walks)
        self.modules = {module_name(Path(d, f)): Path(d, f) for d, _, files in os.walk(PACKAGE)
                        for f in files if f.endswith(".py")}
        self.direct = {name: {i for i in imports_of(path)
                              if not i.startswith("hostnic") or i in self.modules}
                       for name, path in self.modules.items()}

    def reach(self, module: str) -> set[str]:
        """Everything ``module`` imports, through other hostnic modules too."""
        seen: set[str] = set()
        todo = [module]
        while todo:
            for imported in self.direct.get(todo.pop(), ()):
                if imported not in seen:
                    seen.add(imported)
                    if imported in self.modules:
                        todo.append(imported)
        return seen

    def test_nothing_imports_upward(self) -> None:
        upward = []
        for module, imported in self.direct.items():
            _, mine = layer(module)
            for other in imported:
                if other.startswith("hostnic") and other in self.modules:
                    theirs_prefix, theirs = layer(other)
                    if theirs > mine:
                        upward.append(f"{module} imports {other}")
        self.assertEqual(upward, [])

    def test_each_layer_reaches_nothing_it_must_not(self) -> None:
        breaches = []
        for module in self.modules:
            for prefix, banned in FORBIDDEN.items():
                if module == prefix or module.startswith(prefix + "."):
                    breaches += [f"{module} reaches {reached}" for reached in self.reach(module)
                                 if reached.startswith(banned) and reached not in ALLOWED]
        self.assertEqual(breaches, [])

    def test_the_layers_are_read(self) -> None:
        """The rules above are about something: every package is there and
        the core does reach the state and its own ports."""
        self.assertIn("hostnic.state.model", self.reach("hostnic.core.owner"))
        self.assertIn("hostnic.core.ports", self.reach("hostnic.core.owner"))
        self.assertIn("hostnic.core.owner", self.reach("hostnic.daemon.compose"))
        self.assertTrue(any(m.startswith("hostnic.kernel.") for m in self.modules))

    def test_the_admin_api_reads_what_the_core_publishes(self) -> None:
        """Not the core's collaborators (its host, lender, ledger, store) nor
        its live state: its view, its host view, its events, its commands."""
        allowed = {"view", "host_view", "events", "forget_network", "release"}
        used = set()
        tree = ast.parse((PACKAGE / "api" / "admin.py").read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "core"):
                used.add(node.attr)
        self.assertTrue(used)
        self.assertEqual(used - allowed, set())
