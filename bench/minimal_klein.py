"""The floor of a Klein driver: a minimal Klein app that answers the
libnetwork calls the bench makes, with what hostnic would answer, and does
nothing else (no state, no netlink). Run by bench/references.py:

    python bench/minimal_klein.py SOCKET
"""

from __future__ import annotations

import json
import sys

from klein import Klein
from twisted.internet import reactor
from twisted.web.server import Site

app = Klein()
ANSWERS = {
    "Plugin.Activate": {"Implements": ["NetworkDriver"]},
    "NetworkDriver.Join": {"InterfaceName": {"SrcName": "hn0123456789", "DstPrefix": "eth"},
                           "DisableGatewayService": True},
}


@app.route("/", branch=True)
def answer(request):  # type: ignore[no-untyped-def]
    request.content.read()
    request.setHeader(b"Content-Type", b"application/vnd.docker.plugins.v1+json")
    return json.dumps(ANSWERS.get(request.path.decode().strip("/"), {})).encode()


if __name__ == "__main__":
    reactor.listenUNIX(sys.argv[1], Site(app.resource()))  # type: ignore[attr-defined]
    reactor.run()
