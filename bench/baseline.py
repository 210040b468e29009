"""The baseline: a bare aiohttp endpoint doing the sidecar's HMAC with a constant key.

Same framework, same event loop, same answer shape, no Redis and no crypto
envelope: what signing would cost if the token were a constant.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp import web

KEY = b"wsk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
Handler = Callable[[web.Request], Awaitable[web.Response]]


async def sign(request: web.Request) -> web.Response:
    body = await request.read()
    digest = hmac.new(KEY, body, hashlib.sha256).hexdigest()
    return web.json_response(
        {"headers": {"X-Webhook-Signature": "sha256=" + digest}, "name": "orders", "version": 1}
    )


def serve(path: str, handler: Handler, client_max_size: int) -> None:
    """Serve ``handler`` at ``path`` on the port given as ``--port``, on uvloop, no access log."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=client_max_size)
    app.router.add_post(path, handler)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    serve("/v1/sign", sign, 1024 * 1024 + 1)
