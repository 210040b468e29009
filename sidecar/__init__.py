"""wisp-sidecar: webhook signing secrets in Redis, managed over XRPC, signed pod-locally."""

__version__ = "0.1.0"
