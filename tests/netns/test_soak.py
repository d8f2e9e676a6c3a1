"""The real-kernel SIGKILL soak, short: hostnic killed at every crash point of
a lifecycle and at random instants, under a dockerd-like client that retries
dropped calls. The long run is ``bench/soak.py --kills N``."""

from __future__ import annotations

import io
import os

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench.soak import Soak
from hostnic.faults import POINTS

pytestmark = pytest.mark.netns


class SoakTests(SynchronousTestCase):
    def test_kills_at_every_phase_lose_nothing(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("the soak needs root")
        log = io.StringIO()
        soak = Soak(seed=7, log=log)
        self.addCleanup(soak.close)
        figures = soak.run(kills=2 * len(POINTS))
        print(f"\nsoak: {figures}, crash points hit: {sorted(soak.killed_at)}")
        self.assertEqual(soak.killed_at, set(POINTS), log.getvalue())
        for bad in ("lost_networks", "lost_claims", "lost_nics", "absent_src_names",
                    "nics_not_restored", "leftover_claims", "leftover_networks"):
            self.assertEqual(figures[bad], 0, f"{bad}: {log.getvalue()}")
        self.assertNotIn("Traceback", soak.plugin_log())
