"""Artifacts that more than one test directory needs, built once a session."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str, timeout: float) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n"
                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def pytest_report_header(config: pytest.Config) -> str:
    dockerd = os.environ.get("HOSTNIC_E2E_DOCKERD") or "/usr/sbin/dockerd"
    try:
        version = subprocess.run([dockerd, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
    except OSError as e:
        version = f"not runnable: {e}"
    return f"end-to-end engine: {dockerd}: {version}"


@pytest.fixture(scope="session")
def built_deb() -> Path:
    """scripts/build-deb, as a user runs it, from this tree; or the .deb
    HOSTNIC_TEST_DEB names (scripts/test's second engine reuses the first's)."""
    if os.environ.get("HOSTNIC_TEST_DEB"):
        return Path(os.environ["HOSTNIC_TEST_DEB"])
    started = time.monotonic()
    built = Path(_run(str(ROOT / "scripts" / "build-deb"), timeout=900).split()[-1])
    print(f"\n.deb built in {time.monotonic() - started:.0f}s: {built.name}, "
          f"{built.stat().st_size / 1e6:.1f} MB")
    return built


@pytest.fixture(scope="session")
def plugin_dir(built_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/build-plugin on that .deb: a managed plugin's config.json + rootfs."""
    out = tmp_path_factory.mktemp("plugin") / "hostnic"
    said = _run(str(ROOT / "scripts" / "build-plugin"), "--deb", str(built_deb), str(out),
                timeout=900)
    print("\n" + said.splitlines()[-2])  # its size and build time
    assert os.path.isfile(out / "config.json")
    return out
