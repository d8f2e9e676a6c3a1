"""One private dockerd + hostnic for the whole end-to-end session."""

from __future__ import annotations

import itertools
import os
from typing import Iterator

import pytest

from tests.e2e.rig import Rig

_subnets = itertools.count(10)


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end suite needs root (namespaces, veth, dockerd)")
    rig = Rig()
    try:
        rig.start()
        yield rig
    finally:
        rig.close()


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
