from __future__ import annotations

import io

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hostnic.daemon.journald import JournaldObserver, TextObserver


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


class TextObserverTests(SynchronousTestCase):
    def test_lines_carry_time_namespace_and_level(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="hostnic.test", observer=TextObserver(out))
        log.info("joined {endpoint}", endpoint="abc")
        log.warn("careful")
        lines = out.getvalue().splitlines()
        self.assertRegex(lines[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
                                   r"\[hostnic\.test#info\] joined abc$")
        self.assertTrue(lines[1].endswith("[hostnic.test#warn] careful"))

    def test_twistd_uses_it_unless_told_otherwise(self) -> None:
        from twisted.application.service import Application
        from twisted.logger import ILogObserver
        from hostnic.daemon.tap import HostnicServices
        application = Application("hostnic")
        HostnicServices().setServiceParent(application)
        self.assertIsInstance(ILogObserver(application), TextObserver)
