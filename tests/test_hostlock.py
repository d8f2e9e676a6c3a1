"""One hostnic per host: the abstract-socket lock and its refusal."""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from hostnic.daemon.hostlock import claim_host, holder
from hostnic.errors import HostnicError


class HostLockTests(TestCase):
    def setUp(self) -> None:
        # A name of this test's own: a real hostnic may run on this machine.
        self.name = f"hostnic-test/{os.getpid()}/{id(self)}"

    def claim(self, description: str = "the first"):  # type: ignore[no-untyped-def]
        port = claim_host(reactor, description, self.name)
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def test_a_second_claim_is_refused_naming_the_holder(self):  # type: ignore[no-untyped-def]
        self.claim("the managed Docker plugin (pid 7)")
        # The refusal asks the holder, whose reactor must run meanwhile.
        refusal = yield deferToThread(self.assertRaises, HostnicError,
                                      claim_host, reactor, "the second", self.name)
        self.assertIn("another hostnic already hands out this host's NICs: "
                      "the managed Docker plugin (pid 7).", refusal.message)
        self.assertIn("docker plugin disable hostnic", refusal.message)
        self.assertIn("systemctl stop hostnic.socket hostnic.service", refusal.message)

    @inlineCallbacks
    def test_the_name_is_free_again_once_the_holder_is_gone(self):  # type: ignore[no-untyped-def]
        # However the holder ends: a SIGKILL closes its descriptors too.
        yield claim_host(reactor, "gone", self.name).stopListening()
        self.claim()

    def test_a_silent_holder_still_gets_a_sentence(self) -> None:
        silent = socket.socket(socket.AF_UNIX)
        self.addCleanup(silent.close)
        silent.bind("\0" + self.name)
        silent.listen(1)  # never answers
        self.assertEqual(holder(self.name, timeout=0.2), "it did not say who it is")
        self.assertRaises(HostnicError, claim_host, reactor, "second", self.name)
