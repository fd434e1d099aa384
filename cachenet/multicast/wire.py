"""The datagram format of multicast sessions (ALC/FLUTE-like, one object = one block).

Every datagram starts with a fixed 56-byte header, network byte order:

    magic "CNM1" | kind u8 | flags u8 | reserved u16 | session 8 bytes | block id 16 bytes
    | block seq u32 | offset u64 | length u32 | checksum u64 (XXH3-64 of the payload)

`kind` is PIECE (the payload is bytes [offset, offset+length) of the block) or END (a
pass is over; `seq` is the number of blocks in the session, `offset` the repair round
that starts: 1 after the main pass, 2 after the first repair pass...). After each END
members report the pieces they lack (NACK) and the node sends the pieces that several
members lack once more, by multicast; an END with flag FINAL says nothing more will come. `seq` is the
block's position in the session's sending order, so a receiver that sees seq k knows
the blocks before k are behind the sender. The checksum only catches damaged
datagrams: receivers still verify every whole block against its id and BLAKE3.
"""

import struct
from dataclasses import dataclass
from typing import Final

import xxhash

__all__ = (
    "BadDatagram",
    "Datagram",
    "END",
    "FINAL",
    "HEADER_BYTES",
    "MAX_DATAGRAM_BYTES",
    "PIECE",
    "decode",
    "encode_end",
    "encode_piece",
)

MAGIC: Final = b"CNM1"
PIECE: Final = 1
END: Final = 2
FINAL: Final = 1  # END flag: the session sends nothing more
_HEADER: Final = struct.Struct("!4sBBH8s16sIQIQ")
HEADER_BYTES: Final = _HEADER.size
MAX_DATAGRAM_BYTES: Final = 65507  # the largest UDP payload over IPv4


class BadDatagram(ValueError):
    """Not one of ours, truncated or damaged: receivers drop it and count it as lost."""


@dataclass(frozen=True, slots=True)
class Datagram:
    """A decoded datagram; `payload` is a view into the receive buffer."""

    kind: int
    flags: int
    session: bytes
    block_id: bytes
    seq: int
    offset: int
    payload: memoryview


def encode_piece(session: bytes, block_id: bytes, seq: int, offset: int, payload: bytes | memoryview) -> bytes:
    """A PIECE datagram carrying `payload` = block bytes from `offset`."""
    header = _HEADER.pack(
        MAGIC, PIECE, 0, 0, session, block_id, seq, offset, len(payload), xxhash.xxh3_64_intdigest(payload)
    )
    return header + payload


def encode_end(session: bytes, blocks: int, *, repair_round: int, final: bool) -> bytes:
    """The END datagram opening `repair_round` of a session of `blocks` blocks; `final` when nothing more follows."""
    return _HEADER.pack(
        MAGIC, END, FINAL if final else 0, 0, session, bytes(16), blocks, repair_round, 0, xxhash.xxh3_64_intdigest(b"")
    )


def decode(buf: memoryview) -> Datagram:
    """Parse and check a received datagram; raises `BadDatagram`."""
    if len(buf) < HEADER_BYTES:
        raise BadDatagram(f"{len(buf)} bytes is shorter than the {HEADER_BYTES}-byte header")
    magic, kind, flags, _reserved, session, block_id, seq, offset, length, checksum = _HEADER.unpack_from(buf)
    if magic != MAGIC or kind not in (PIECE, END):
        raise BadDatagram("not a cachenet multicast datagram")
    payload = buf[HEADER_BYTES:]
    if len(payload) != length:
        raise BadDatagram(f"header says {length} payload bytes, the datagram has {len(payload)}")
    if xxhash.xxh3_64_intdigest(payload) != checksum:
        raise BadDatagram("payload checksum mismatch")
    return Datagram(kind, flags, session, block_id, seq, offset, payload)
