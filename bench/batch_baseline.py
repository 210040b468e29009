"""The batch baseline: a bare ``/v1/sign/batch`` that parses the same batch, base64-decodes
each body and HMACs it with a fixed key.

Same framework, event loop (uvloop) and JSON library (orjson) as the sidecar,
the same request and answer shape, and nothing else: no Redis, no checks of
the items, no metrics, no logs. What batch signing would cost if every token
were a constant; ``make bench`` divides the sidecar's rate by this one's.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import hmac

import orjson
import uvloop
from aiohttp import web

KEY = b"wsk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=16 * 1024 * 1024 + 1)
    app.router.add_post("/v1/sign/batch", sign_batch)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
