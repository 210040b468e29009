"""free_port: a port no outgoing connection can take before its server binds it."""

from __future__ import annotations

import socket

from sidecar.storage.embedded import _lowest_ephemeral_port, free_port


def test_a_free_port_is_below_the_ephemeral_range_and_can_be_bound() -> None:
    """Each port chosen lies below the first port the kernel hands to outgoing
    connections (and above the well-known ones), and a listener can bind it."""
    lowest_ephemeral = _lowest_ephemeral_port()
    for _ in range(20):
        port = free_port()
        assert 20000 <= port < lowest_ephemeral
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()
