"""The batch baseline: a bare ``/v1/sign/batch`` that parses the same batch, base64-decodes
each body and HMACs it with a fixed key.

Same framework, event loop (uvloop) and JSON library (orjson) as the sidecar,
the same request and answer shape, and nothing else: no Redis, no checks of
the items, no metrics, no logs. What batch signing would cost if every token
were a constant; ``make bench`` divides the sidecar's rate by this one's.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac

import orjson
from aiohttp import web

from bench.baseline import KEY, serve


async def sign_batch(request: web.Request) -> web.Response:
    items = orjson.loads(await request.read())["items"]
    results = [
        {
            "headers": {
                "X-Webhook-Signature": "sha256="
                + hmac.digest(KEY, binascii.a2b_base64(item["body_b64"]), hashlib.sha256).hex()
            },
            "name": item["name"],
            "version": 1,
        }
        for item in items
    ]
    return web.Response(body=orjson.dumps({"results": results}), content_type="application/json")


if __name__ == "__main__":
    serve("/v1/sign/batch", sign_batch, 16 * 1024 * 1024 + 1)
