"""The version is said once, in hostnic/__init__.py: setup.py reads it, and
the Debian changelog (which Debian's tools need to say it too) must agree."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import hostnic

ROOT = Path(__file__).resolve().parents[1]


class VersionTests(SynchronousTestCase):
    def test_the_debian_changelog_says_the_same_version(self) -> None:
        first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
        self.assertEqual(first.split("(")[1].split(")")[0].split("-")[0], hostnic.__version__)
