"""The soak of the installed daemon (bench/soak.py), short enough for the
suite: hostnic killed at every crash point of a lifecycle, killed and stopped
at random instants, under a dockerd-like client (retries, bodyless retries),
across three compactions of its state at the default period."""

from __future__ import annotations

import io
import os

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench.soak import BAD, Soak
from hostnic.core.crashpoints import POINTS

pytestmark = pytest.mark.netns


class SoakTests(SynchronousTestCase):
    def test_restarts_at_every_phase_lose_nothing(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("the soak needs root")
        log = io.StringIO()
        soak = Soak(seed=7, log=log)
        self.addCleanup(soak.close)
        figures = soak.run(kills=2 * len(POINTS), compactions=3)
        print(f"\nsoak: {figures}, crash points hit: {sorted(soak.killed_at)}")
        self.assertEqual(soak.killed_at, set(POINTS), log.getvalue())
        self.assertGreaterEqual(figures["compactions"], 3)
        self.assertGreaterEqual(figures["kills"] + figures["sigterms"], 2 * len(POINTS))
        self.assertGreater(figures["sigterms"], 0)
        self.assertGreater(figures["bodyless_retries"], 0)
        for bad in BAD:
            self.assertEqual(figures[bad], 0, f"{bad}: {log.getvalue()}")
        self.assertNotIn("Traceback", soak.plugin_log())
