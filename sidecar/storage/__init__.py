"""Redis: the only state, and the only package that talks to it.

It owns the key layout and Lua scripts, the connections to the three
topologies (one server, Sentinel, Cluster), the durability waits, the secret
operations, the service-JWT replay records, the re-wrap job and the embedded
development server. Every Redis failure leaves it as a ``sidecar.errors``
exception. It may import the core; it knows nothing of HTTP.
"""
