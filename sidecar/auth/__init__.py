"""Who is calling: API keys, atproto service JWTs, DID resolution and DID keys.

``Authenticator`` turns an ``Authorization`` header into a ``Caller`` (an owner
DID and an actor label) or ``AuthenticationFailed``. It may import the core and
the replay records in ``sidecar.storage``; it knows nothing of secrets.
"""
