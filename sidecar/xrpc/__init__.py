"""The XRPC listener: methods routed from lexicons, input and output checks, and
the four ``place.wisp.v2.secret.*`` procedures.

It may import the core, ``sidecar.storage`` and ``sidecar.auth``; it knows
nothing of the sign listener.
"""
