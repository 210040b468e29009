"""``GET /.well-known/did.json``: the DID document of a ``did:web`` sidecar.

A PDS that proxies a call (``atproto-proxy: <did>#<service id>``) resolves
the DID, picks the service entry whose id is ``#<service id>``, and forwards
the call to its ``serviceEndpoint`` with a service JWT whose ``aud`` is the
bare ``<did>`` (the reference PDS's choice; the fragment only picks the
endpoint). For a ``did:web`` the document lives at the host's
``/.well-known/did.json``, which the XRPC listener (the public port) serves
when ``SIDECAR_SERVICE_ENDPOINT`` is set; without it the document is the
operator's to serve elsewhere. Other DID methods publish the entry where that
method keeps documents.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

PATH: Final = "/.well-known/did.json"
CONTEXT: Final = ("https://www.w3.org/ns/did/v1",)


def did_document(did: str, *, service_id: str, service_type: str, endpoint: str) -> dict[str, Any]:
    """The document: its ``id`` and the one service entry a PDS looks for."""
    return {
        "@context": list(CONTEXT),
        "id": did,
        "service": [{"id": f"#{service_id}", "type": service_type, "serviceEndpoint": endpoint}],
    }


def add_did_document_route(app: web.Application, document: dict[str, Any]) -> None:
    """Serve ``document`` at ``PATH``; other verbs get the JSON 405 of the middleware."""

    async def serve(request: web.Request) -> web.Response:
        return web.json_response(document)

    # No HEAD: every answer of this listener carries a JSON body.
    app.router.add_get(PATH, serve, allow_head=False)
