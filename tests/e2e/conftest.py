"""Private dockerds with hostnic beside them (legacy socket, managed plugin), per session."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.rig import Rig

_subnets = itertools.count(10)


@contextlib.contextmanager
def started(rig: Rig) -> Iterator[Rig]:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end suite needs root (namespaces, veth, dockerd)")
    try:
        rig.start()
        yield rig
    finally:
        rig.close()


@pytest.fixture(scope="session")
def legacy_rig() -> Iterator[Rig]:
    """hostnic as the .deb runs it: twistd beside dockerd, on the legacy socket."""
    with started(Rig()) as rig:
        yield rig


@pytest.fixture(scope="session")
def managed_rig(plugin_dir: Path) -> Iterator[Rig]:
    """hostnic as a managed Docker plugin, built by scripts/build-plugin."""
    with started(Rig(managed=True, plugin_dir=str(plugin_dir))) as rig:
        yield rig


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Rig:
    """The legacy rig, or the one a test asks for with
    ``@pytest.mark.parametrize("rig", ["legacy", "managed"], indirect=True)``."""
    mode = getattr(request, "param", "legacy")
    found: Rig = request.getfixturevalue(f"{mode}_rig")
    return found


BOTH_MODES = pytest.mark.parametrize("rig", ["legacy", "managed"], indirect=True)


@pytest.fixture
def subnet() -> int:
    """A fresh third octet: dockerd refuses overlapping subnets across networks."""
    return next(_subnets)


@pytest.fixture
def cleanup(rig: Rig) -> Iterator[list[tuple[str, ...]]]:
    """docker commands to run after the test, in reverse order, even on failure."""
    undo: list[tuple[str, ...]] = []
    yield undo
    for args in reversed(undo):
        rig.docker(*args, check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed end-to-end test shows the end of hostnic's log (a managed
    plugin's lines are in dockerd's): the rig's files are gone afterwards."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for rig in {id(r): r for r in getattr(item, "funcargs", {}).values()
                if isinstance(r, Rig)}.values():
        lines = (rig.log("plugin.log").splitlines() if not rig.managed else
                 [l for l in rig.log("dockerd.log").splitlines() if "plugin=" in l])
        report.sections.append((f"hostnic log of {rig.netns} (last 60 lines)",
                                "\n".join(lines[-60:])))
