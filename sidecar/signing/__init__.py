"""The pod-local sign listener: signature schemes over raw bytes, the coalescing
envelope reader, the ``Signer``, and the ``/v1/sign``, ``/v1/sign/batch`` and
``/v1/verify`` handlers.

It may import the core and ``sidecar.storage``; it knows nothing of XRPC.
"""
