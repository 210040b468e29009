"""atproto identities for tests: real key pairs, DID documents, service JWTs, and a
loopback host that serves the documents over real HTTP.

Everything here is written from the specs, independently of ``sidecar``, so
the tests check the sidecar against an outside view of the formats: base58btc
and the multicodec prefixes are encoded here by hand, and tokens are signed
with ``cryptography`` the way a PDS signs them (raw ``r||s``, low-S).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ES256K: Final = "ES256K"
ES256: Final = "ES256"
CURVES: Final[dict[str, ec.EllipticCurve]] = {ES256K: ec.SECP256K1(), ES256: ec.SECP256R1()}
# The group orders, to turn a low-S signature into its high-S twin.
ORDERS: Final = {
    ES256K: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    ES256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
# Multicodec varints: secp256k1-pub is 0xe7, p256-pub is 0x1200.
MULTICODEC: Final = {ES256K: b"\xe7\x01", ES256: b"\x80\x24"}
LEGACY_TYPE: Final = {
    ES256K: "EcdsaSecp256k1VerificationKey2019",
    ES256: "EcdsaSecp256r1VerificationKey2019",
}
BASE58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
BASE32: Final = "abcdefghijklmnopqrstuvwxyz234567"

SERVICE_DID: Final = "did:web:sidecar.example.com"


def b58encode(data: bytes) -> str:
    """``data`` in base58btc, each leading zero byte kept as a ``1``."""
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, digit = divmod(number, 58)
        digits = BASE58[digit] + digits
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + digits


def b64url(data: bytes) -> str:
    """``data`` in base64url without padding, as a JWT encodes its parts."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_plc_did() -> str:
    """A fresh did:plc of the real shape: 24 characters of lower-case base32."""
    return "did:plc:" + "".join(secrets.choice(BASE32) for _ in range(24))


def web_did(host: str) -> str:
    """The did:web of ``host`` (``127.0.0.1:8080`` becomes ``did:web:127.0.0.1%3A8080``)."""
    return "did:web:" + host.replace(":", "%3A")


@dataclass
class KeyPair:
    """A real ECDSA key pair on the curve of ``alg``."""

    alg: str
    private: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, alg: str) -> KeyPair:
        return cls(alg, ec.generate_private_key(CURVES[alg]))

    def point(self, *, compressed: bool = True) -> bytes:
        fmt = PublicFormat.CompressedPoint if compressed else PublicFormat.UncompressedPoint
        return self.private.public_key().public_bytes(Encoding.X962, fmt)

    def multikey(self) -> str:
        """``publicKeyMultibase`` of a Multikey: base58btc of prefix and compressed point."""
        return "z" + b58encode(MULTICODEC[self.alg] + self.point())

    def sign(self, message: bytes, *, high_s: bool = False) -> bytes:
        """Raw ``r||s``, low-S as atproto signers make it, or its high-S twin."""
        r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        order = ORDERS[self.alg]
        low = min(s, order - s)
        s = order - low if high_s else low
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def did_document(did: str, key: KeyPair, *, legacy: bool = False) -> dict[str, Any]:
    """A DID document whose ``#atproto`` method holds ``key``, as a PLC directory serves it."""
    if legacy:
        method = {"type": LEGACY_TYPE[key.alg], "publicKeyMultibase": "z" + b58encode(key.point())}
    else:
        method = {"type": "Multikey", "publicKeyMultibase": key.multikey()}
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "alsoKnownAs": ["at://someone.example.com"],
        "verificationMethod": [{"id": f"{did}#atproto", "controller": did, **method}],
        "service": [
            {
                "id": "#atproto_pds",
                "type": "AtprotoPersonalDataServer",
                "serviceEndpoint": "https://pds.example.com",
            }
        ],
    }


def encode_jwt(header: dict[str, Any], payload: dict[str, Any], sign: Any) -> str:
    """A compact JWS: ``sign`` gets the signing input and returns the signature bytes."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(payload).encode())
    signature = sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64url(signature)}"


@dataclass
class Issuer:
    """An atproto account: a DID and the key its document names, minting service JWTs."""

    did: str
    key: KeyPair

    def document(self, *, legacy: bool = False) -> dict[str, Any]:
        return did_document(self.did, self.key, legacy=legacy)

    def token(
        self,
        lxm: str | None,
        *,
        aud: str | None = SERVICE_DID,
        lifetime: float = 60,
        now: float | None = None,
        header: dict[str, Any] | None = None,
        key: KeyPair | None = None,
        high_s: bool = False,
        **claims: Any,
    ) -> str:
        """A token as getServiceAuth makes it (iat, exp, jti), with any claim overridden.

        A claim given as None is left out.
        """
        issued = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": self.did,
            "aud": aud,
            "lxm": lxm,
            "iat": int(issued),
            "exp": int(issued + lifetime),
            "jti": secrets.token_hex(16),
            **claims,
        }
        payload = {name: value for name, value in payload.items() if value is not None}
        signer = key or self.key
        return encode_jwt(
            {"typ": "JWT", "alg": signer.alg, **(header or {})},
            payload,
            lambda message: signer.sign(message, high_s=high_s),
        )


@dataclass
class CannedReply:
    """A canned answer of the fake host, for documents that are not plain JSON."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


class DidHost:
    """A loopback PLC directory and did:web host in one, over real HTTP.

    ``GET /<did>`` answers like a PLC directory, ``GET /.well-known/did.json``
    like the host of ``did:web:<this host>``. ``documents`` maps a DID to its
    JSON document or to a ``CannedReply``; ``requests`` records every path asked for.
    """

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.requests: list[str] = []
        self.host = ""  # set once the server listens: "127.0.0.1:<port>"
        self.url = ""  # the PLC directory base URL

    @property
    def did(self) -> str:
        """The did:web this host is the home of."""
        return web_did(self.host)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/did.json", self._well_known)
        app.router.add_get("/{did}", self._plc)
        return app

    async def _well_known(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        return await self._answer(web_did(request.host))

    async def _plc(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        return await self._answer(request.match_info["did"])

    async def _answer(self, did: str) -> web.StreamResponse:
        document = self.documents.get(did)
        if document is None:
            return web.json_response({"message": f"DID not registered: {did}"}, status=404)
        if isinstance(document, CannedReply):
            if document.hang:
                await asyncio.Event().wait()
            return web.Response(
                status=document.status, body=document.body, headers=document.headers
            )
        return web.json_response(document)


class ProxyingPds:
    """A PDS stand-in that proxies calls as the reference PDS's pipethrough does.

    It hosts one account (``issuer``), whose client authenticates with
    ``access_token``. A call to ``/xrpc/<nsid>`` with ``atproto-proxy:
    <did>#<service id>`` is served by: resolving ``<did>`` (a did:web, over
    http for a loopback host as ``@atproto/identity`` does for localhost),
    picking the service entry whose id is ``#<service id>`` (or the DID
    followed by it), minting an ES256K service JWT with ``aud`` set to the
    bare DID (the fragment only picks the endpoint) and ``lxm`` to the NSID,
    and forwarding the method,
    query and body to ``<endpoint>/xrpc/<nsid>``. ``minted`` keeps every token.
    """

    def __init__(self, issuer: Issuer, session: Any) -> None:
        self.issuer = issuer
        self.session = session
        self.access_token = secrets.token_urlsafe(24)
        self.minted: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/xrpc/{nsid}", self._proxy)
        return app

    @staticmethod
    def _error(status: int, error: str, message: str) -> web.Response:
        return web.json_response({"error": error, "message": message}, status=status)

    async def _resolve(self, did: str) -> dict[str, Any]:
        host = did.removeprefix("did:web:").replace("%3A", ":")
        scheme = "http" if host.split(":")[0] in ("localhost", "127.0.0.1") else "https"
        async with self.session.get(f"{scheme}://{host}/.well-known/did.json") as answer:
            answer.raise_for_status()
            document: dict[str, Any] = await answer.json()
        return document

    @staticmethod
    def service_endpoint(document: dict[str, Any], service_id: str) -> str | None:
        """The endpoint of the entry ``#<id>`` or ``<did>#<id>``, if it is an http(s) URL."""
        for service in document.get("service", []):
            if service.get("id") in (service_id, f"{document.get('id')}{service_id}"):
                endpoint = service.get("serviceEndpoint")
                if isinstance(endpoint, str) and endpoint.startswith(("https://", "http://")):
                    return endpoint
                return None
        return None

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return self._error(401, "AuthenticationRequired", "bad session")
        proxy_to = request.headers.get("atproto-proxy", "")
        hash_index = proxy_to.find("#")
        if hash_index <= 0 or "#" in proxy_to[hash_index + 1 :] or hash_index == len(proxy_to) - 1:
            return self._error(400, "InvalidRequest", "no service id specified")
        did, service_id = proxy_to[:hash_index], proxy_to[hash_index:]
        document = await self._resolve(did)
        endpoint = self.service_endpoint(document, service_id)
        if endpoint is None:
            return self._error(400, "InvalidRequest", "could not resolve proxy did service url")
        nsid = request.match_info["nsid"]
        token = self.issuer.token(nsid, aud=did)
        self.minted.append(token)
        headers = {"Authorization": f"Bearer {token}"}
        if request.content_type and request.can_read_body:
            headers["Content-Type"] = request.content_type
        body = await request.read() if request.can_read_body else None
        async with self.session.request(
            request.method, f"{endpoint}{request.path_qs}", headers=headers, data=body
        ) as upstream:
            return web.Response(
                status=upstream.status,
                body=await upstream.read(),
                content_type=upstream.content_type,
            )
