"""Who is calling: API keys, atproto service JWTs, DID resolution and DID keys.

``Authenticator`` turns a bearer credential (a string the listener took out of
the ``Authorization`` header) into a ``Caller`` (an owner DID and an actor
label, ``caller.py``) or ``AuthenticationFailed``. It may import the core and
the replay records in ``sidecar.storage``; it knows nothing of secrets, and
nothing of HTTP but the DID resolver's client.
"""
