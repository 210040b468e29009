"""The worked signing example in docs/api.md is what the code computes."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from sidecar.signing import schemes

API_DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
TOKEN = "wsk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def worked_body() -> bytes:
    """The example's body, as the page shows it."""
    match = re.search(r"the body\n\n```\n(.+?)\n```", API_DOC)
    assert match is not None, "the worked example's body is missing from docs/api.md"
    return match.group(1).encode()


def test_every_scheme_in_the_worked_example_matches_the_code() -> None:
    """Each header value docs/api.md shows for the example is exactly what sign() returns."""
    body = worked_body()
    for scheme in schemes.SCHEMES:
        headers = schemes.sign(scheme, TOKEN, body, msg_id="msg_2b7Xk", timestamp=1705314600)
        for name, value in headers.items():
            assert f"{name}: {value}" in API_DOC, (scheme, name)


def test_the_standard_receiver_secret_is_right() -> None:
    """The whsec_ secret shown for the example token is whsec_ + base64(token)."""
    assert "whsec_" + base64.b64encode(TOKEN.encode()).decode() in API_DOC
