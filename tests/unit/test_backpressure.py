"""How many requests a read can end: the check that lets the backpressure parse a read
whole instead of slice by slice (``sidecar.backpressure``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.backpressure import _fewer_requests_end_in

# The shortest request heads, with either line ending, and bytes with no line feed.
HEADS = st.sampled_from([b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\n\n", b"GET /\r\nA: b\n\r\n"])
FILLER = st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b""))


@given(heads=st.lists(st.tuples(HEADS, FILLER), max_size=40), room=st.integers(0, 20))
def test_a_read_said_to_end_fewer_requests_than_room_does(
    heads: list[tuple[bytes, bytes]], room: int
) -> None:
    """Whatever mix of heads and other bytes a read holds, and however a head split off the
    read before ends in it: when the check says fewer than ``room`` end, fewer do."""
    data = b"".join(head + filler for head, filler in heads)
    # The previous read may have ended a blank line but for its last line feed.
    for read, ended in ((data, len(heads)), (b"\n" + data, len(heads) + 1)):
        if _fewer_requests_end_in(read, room):
            assert ended < room


def test_a_body_without_line_feeds_is_parsed_whole_and_pipelined_heads_are_not() -> None:
    """A 100 KiB base64 batch body ends no request; 16 pipelined heads reach a bound of 16."""
    assert _fewer_requests_end_in(b"QUJD" * 25_600, 15)
    assert not _fewer_requests_end_in(b"GET / HTTP/1.1\r\n\r\n" * 16, 16)
    assert not _fewer_requests_end_in(b"", 1)
