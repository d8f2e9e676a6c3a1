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
