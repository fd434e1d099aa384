"""Messages of multicast delivery's device routes: joining, a session's state, NACKs and leaving."""

from typing import Annotated, Final, Literal

import msgspec

from cachenet.protocol.patterns import SESSION_ID, schema_pattern
from cachenet.protocol.types import BlockId, ShortText

__all__ = ("JoinRequest", "LeaveRequest", "MAX_JOIN_BLOCKS", "MAX_NACK_RANGES", "NackRequest", "SessionState")

MAX_JOIN_BLOCKS: Final = 65536  # block ids one join may name
MAX_NACK_RANGES: Final = 8192  # [block seq, first piece, end piece] ranges one NACK may list
MemberId = Annotated[str, msgspec.Meta(pattern=schema_pattern(SESSION_ID), min_length=16, max_length=16)]
SessionStateName = Literal["waiting", "sending", "repairing", "done", "abandoned", "failed"]


class JoinRequest(msgspec.Struct, frozen=True):
    """POST /v1/multicast/join: the blocks of a model this device lacks, and what its link takes (bytes/s)."""

    model: ShortText
    blocks: Annotated[list[BlockId], msgspec.Meta(max_length=MAX_JOIN_BLOCKS)]
    revision: ShortText = "main"
    rate: Annotated[float, msgspec.Meta(gt=0)] | None = None


class NackRequest(msgspec.Struct, frozen=True):
    """POST /v1/multicast/sessions/{session}/nack: the pieces a member lacks after a pass."""

    member: MemberId
    missing: Annotated[list[tuple[int, int, int]], msgspec.Meta(max_length=MAX_NACK_RANGES)]
    round: int = 1


class LeaveRequest(msgspec.Struct, frozen=True):
    """POST /v1/multicast/sessions/{session}/leave: the multicast bytes a member expected and lost."""

    member: MemberId
    expected_bytes: int = 0
    missed_bytes: int = 0


class SessionState(msgspec.Struct, frozen=True):
    """A session's state and the sender's progress (what members poll)."""

    session: str
    state: SessionStateName
    group: str
    port: int
    rate: float
    piece_bytes: int
    blocks: int
    bytes: int
    cursor: int
    sent_bytes: int
    members: int
    joined: int
    repair_round: int
