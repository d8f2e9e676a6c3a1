from __future__ import annotations

import io

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hostnic.journald import JournaldObserver


class JournaldTests(SynchronousTestCase):
    def test_each_line_carries_its_priority(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="hostnic.test", observer=JournaldObserver(out))
        log.info("joined {endpoint}", endpoint="abc")
        log.warn("careful")
        log.error("broken")
        log.critical("fatal")
        log.debug("detail")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("boom", Failure())
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[:5], ["<6>[hostnic.test] joined abc", "<4>[hostnic.test] careful",
                                     "<3>[hostnic.test] broken", "<2>[hostnic.test] fatal",
                                     "<7>[hostnic.test] detail"])
        self.assertTrue(all(line.startswith("<2>") for line in lines[5:]))
        self.assertIn("ZeroDivisionError", out.getvalue())
