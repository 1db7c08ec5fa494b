"""Loopback ports for the processes the deployment checks start (the gateway, Prometheus), which bind them themselves.

The ports come from below Linux's ephemeral range (32768-60999): an outgoing connection (the gateway's to RabbitMQ,
Prometheus's scrapes) or a bind to port 0 cannot take one between the moment it is handed out and the moment its
process binds it, as it could take a port that bind(0) had just found free. Each port is handed out once per run.
"""

import itertools
import os
import socket

_FIRST, _END = 20_000, 26_000  # the Rust suite's range is 26000-32000
_NEXT = itertools.count((os.getpid() * 997) % (_END - _FIRST))


def free_port():
    """A loopback port, free when handed out and not handed out before in this run."""
    for _ in range(_END - _FIRST):
        port = _FIRST + next(_NEXT) % (_END - _FIRST)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in {_FIRST}-{_END - 1}")
