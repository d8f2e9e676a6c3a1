# A lazy ServiceMaker: twistd's plugin scan imports nothing heavy from here.
from twisted.application.service import ServiceMaker

hostnic = ServiceMaker(
    "hostnic", "hostnic.daemon.tap",
    "Docker network driver that hands host NICs to containers", "hostnic")
