"""The datagram format: round trips, and everything a receiver must drop."""

import pytest

from cachenet.errors import BadInput
from cachenet.multicast.sockets import group_address, validate_group
from cachenet.multicast.wire import (
    END,
    FINAL,
    HEADER_BYTES,
    PIECE,
    BadDatagram,
    decode,
    encode_end,
    encode_piece,
)

SESSION = bytes(range(8))
BLOCK = bytes(range(16, 32))


def test_a_piece_round_trips() -> None:
    d = decode(memoryview(encode_piece(SESSION, BLOCK, 7, 16384, b"payload")))
    assert (d.kind, d.session, d.block_id, d.seq, d.offset, bytes(d.payload)) == (
        PIECE,
        SESSION,
        BLOCK,
        7,
        16384,
        b"payload",
    )


def test_an_end_round_trips() -> None:
    d = decode(memoryview(encode_end(SESSION, 42, repair_round=2, final=False)))
    assert (d.kind, d.flags, d.session, d.seq, d.offset, len(d.payload)) == (END, 0, SESSION, 42, 2, 0)
    assert decode(memoryview(encode_end(SESSION, 42, repair_round=3, final=True))).flags == FINAL


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"CNM1",
        b"XXXX" + encode_piece(SESSION, BLOCK, 0, 0, b"abc")[4:],
        encode_piece(SESSION, BLOCK, 0, 0, b"abc")[:-1],
        encode_piece(SESSION, BLOCK, 0, 0, b"abc") + b"x",
        encode_piece(SESSION, BLOCK, 0, 0, b"abc")[:-1] + b"d",
        encode_piece(SESSION, BLOCK, 0, 0, b"abc")[:4] + b"\x09" + encode_piece(SESSION, BLOCK, 0, 0, b"abc")[5:],
    ],
    ids=["empty", "magic only", "other magic", "short payload", "long payload", "damaged", "unknown kind"],
)
def test_bad_datagrams_are_refused(datagram: bytes) -> None:
    with pytest.raises(BadDatagram):
        decode(memoryview(datagram))


def test_the_header_is_small() -> None:
    assert HEADER_BYTES == 56


def test_group_addresses_are_checked() -> None:
    assert group_address("239.255.77.1", 3) == "239.255.77.4"
    for bad in ("10.0.0.1", "nonsense", "239.255.77.1; rm -rf /"):
        with pytest.raises(BadInput):
            validate_group(bad)
    with pytest.raises(BadInput):
        group_address("239.255.255.255", 20_000_000)
