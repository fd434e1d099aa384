"""What the multicast hub keeps per device and per session, and the answer of a device sent by unicast."""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from cachenet.edge.multicast.sender import SessionSender
from cachenet.manifest import BlockRef
from cachenet.multicast.plan import MemberDemand
from cachenet.protocol.multicast import SessionState

__all__ = ("LIVE_STATES", "Member", "Session", "unicast_answer")

# States in which a session still sends (its group address is taken).
LIVE_STATES: Final = ("waiting", "sending", "repairing")


@dataclass(slots=True)
class Member:
    """A device in a batch or session."""

    member_id: str  # secret: only the device knows it (it is what `leave` checks)
    demand: MemberDemand  # under a public label, as plans show it
    refs: dict[str, BlockRef]
    model: str
    address: str = ""  # the client address it joined from (its polls keep it live)


@dataclass(slots=True)
class Session:
    """One multicast group's transmission."""

    session_id: bytes
    slot: int
    group: str
    port: int
    rate: float
    piece_bytes: int
    blocks: list[BlockRef]
    model: str
    plan: dict[str, Any]
    members: dict[str, Member] = field(default_factory=dict)
    state: str = "waiting"
    sender: SessionSender | None = None
    task: "asyncio.Task[None] | None" = None
    created_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    joined: int = 0
    repair_round: int = 0
    # Per member that reported this round: its merged [block seq, first, end piece) ranges.
    nack_reports: list[list[tuple[int, int, int]]] = field(default_factory=list)
    nacked: set[str] = field(default_factory=set)
    # A session sends only while a member showed it is alive (it polled or reported) lately.
    live_until: float = 0.0
    addresses: set[str] = field(default_factory=set)  # where its members joined from

    def add_member(self, m: Member, *, until: float) -> None:
        """Take `m` in; the session is live at least until `until`."""
        self.members[m.member_id] = m
        self.addresses.add(m.address)
        self.joined += 1
        self.live_until = max(self.live_until, until)

    @property
    def hex(self) -> str:
        """The session id as hex."""
        return self.session_id.hex()

    @property
    def cursor(self) -> int:
        """Sequence number of the block being sent (len(blocks) once all were sent)."""
        if self.state in ("done", "abandoned", "failed"):
            return len(self.blocks)
        return self.sender.cursor if self.sender is not None else 0

    def to_json(self) -> dict[str, Any]:
        """`state_message` as a dict (inside the hub's larger answers)."""
        return msgspec.structs.asdict(self.state_message())

    def state_message(self) -> SessionState:
        """What members poll: the state and how far the sender got."""
        return SessionState(
            session=self.hex,
            state=self.state,  # type: ignore[arg-type]  # one of SessionStateName by construction
            group=self.group,
            port=self.port,
            rate=self.rate,
            piece_bytes=self.piece_bytes,
            blocks=len(self.blocks),
            bytes=sum(b.size for b in self.blocks),
            cursor=self.cursor,
            sent_bytes=self.sender.sent_bytes if self.sender is not None else 0,
            members=len(self.members),
            joined=self.joined,
            repair_round=self.repair_round,
        )


def unicast_answer(m: Member, plan: dict[str, Any]) -> dict[str, Any]:
    """The join answer of a device that gets every block by unicast."""
    return {
        "member": m.member_id,
        "session": None,
        "multicast": [],
        "multicast_seq": [],
        "repair": [],
        "unicast": list(m.refs),
        "late": False,
        "plan": plan,
    }
