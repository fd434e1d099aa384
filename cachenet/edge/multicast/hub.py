"""Multicast sessions of an edge node: batching joins, planning, late joiners and leavers.

Devices that want blocks say so with a join. Joins that arrive within the batching
window are planned together (`cachenet.multicast.plan`): each multicast group of the
plan becomes a session with its own group address, sent at its slowest member's rate;
every member learns which of its blocks come by multicast, and fetches the rest by
unicast. A join that arrives while a session is sending blocks it wants becomes a late
member of that session: it gets the blocks still to come by multicast and the ones
already sent by repair. A session whose members all left stops.

After the main pass the members report the pieces they lack (NACK); pieces that two or
more members lack are sent once more by multicast (one repair pass), and each member
fetches what it still lacks by HTTP Range (unicast repair).
"""

import asyncio
import logging
import math
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cachenet.blockid import validate_block_id
from cachenet.edge.cache import EdgeCache
from cachenet.edge.config import EdgeSettings
from cachenet.edge.manifests import ManifestCache
from cachenet.edge.metrics import EdgeMetrics
from cachenet.edge.multicast.guard import JoinLimiter, merge_report, repeated_pieces
from cachenet.edge.multicast.sender import Pacer, SessionSender
from cachenet.edge.multicast.state import LIVE_STATES, Member, Session, unicast_answer
from cachenet.errors import BadInput, NotFound
from cachenet.manifest import BlockRef, ModelManifest
from cachenet.multicast.plan import DeliveryPlan, GroupPlan, MemberDemand, plan_delivery
from cachenet.multicast.sockets import group_address, open_sender
from cachenet.server.pacer import TokenBucket

__all__ = ("LIVE_STATES", "MulticastHub", "Session")
log = logging.getLogger(__name__)

# Finished sessions stay visible this long, for members polling their state.
_KEEP_FINISHED_S: Final = 300.0
MAX_PENDING_MEMBERS: Final = 1024
MAX_SESSION_MEMBERS: Final = 4096
# Declared rates below this are refused; rates are rounded down to steps of this ratio
# before planning, so a batch has few distinct rates (a small, fast search).
MIN_RATE: Final = 10_000.0
_RATE_STEP: Final = 2**0.5
# A late joiner joins a session sending at least this share of the rate it could get alone.
_LATE_JOIN_MIN_SHARE: Final = 0.5


@dataclass(slots=True)
class _Batch:
    members: list[Member] = field(default_factory=list)
    answers: dict[str, "asyncio.Future[dict[str, Any]]"] = field(default_factory=dict)


class MulticastHub:
    """Every multicast session of one edge node."""

    def __init__(
        self,
        settings: EdgeSettings,
        cache: EdgeCache,
        manifests: ManifestCache,
        metrics: EdgeMetrics,
        egress: TokenBucket | None,
    ) -> None:
        assert settings.multicast_group is not None
        self.settings, self.cache, self.manifests, self.metrics = settings, cache, manifests, metrics
        self.egress = egress
        self.sessions: dict[str, Session] = {}
        self.last_plan: dict[str, Any] | None = None
        self._batch: _Batch | None = None
        self._sock: socket.socket | None = None
        self._closing = False
        self._expected_bytes = 0
        self._missed_bytes = 0
        self._labels = 0
        self.joins = JoinLimiter()
        self.lease_s = settings.multicast_member_lease_s

    # -- what devices see ----------------------------------------------------------------

    def announcement(self) -> dict[str, Any]:
        """GET /v1/multicast: where the groups are, and the sessions under way."""
        s = self.settings
        self._forget_old()
        return {
            "enabled": True,
            "node_id": s.node_id,
            "group": s.multicast_group,
            "groups": s.multicast_groups,
            "port": s.group_port,
            "ttl": s.multicast_ttl,
            "interface": s.group_interface,
            "piece_bytes": s.piece_bytes,
            "rate": s.multicast_rate,
            "window_s": s.multicast_window_s,
            "sessions": [x.to_json() for x in self.sessions.values()],
            "last_plan": self.last_plan,
        }

    def session(self, session_hex: str) -> Session:
        """A session by id; raises `NotFound`."""
        found = self.sessions.get(session_hex)
        if found is None:
            raise NotFound(f"no multicast session {session_hex[:32]!r} on {self.settings.node_id}")
        return found

    def touch(self, session: Session, address: str) -> None:
        """A poll of `session` from `address`: its members there are alive (the session keeps sending)."""
        if address in session.addresses:
            session.live_until = time.monotonic() + self.lease_s

    async def join(
        self, name: str, revision: str, block_ids: Sequence[str], rate: float | None, *, client: str = ""
    ) -> dict[str, Any]:
        """Plan a device's blocks: which come by multicast (and from which session), which by unicast.

        Raises `TooManyRequests` when `client` (its address) joins more often than its share.
        """
        if self._closing:
            raise NotFound("the node is shutting down")
        self.joins.admit(client)
        if rate is not None and (not math.isfinite(rate) or rate < MIN_RATE):
            raise BadInput(f"rate must be at least {MIN_RATE:g} bytes/s, got {rate!r}")
        manifest = await self.manifests.get(name, revision)
        known = await self._blocks_of(manifest)
        refs: dict[str, BlockRef] = {}
        for b in block_ids:
            validate_block_id(b)
            if b not in known:
                raise BadInput(f"block {b} is not part of {manifest.name}@{manifest.revision[:12]} or its base")
            refs[b] = known[b]
        if not refs:
            raise BadInput("a join names at least one block")
        self._labels += 1
        planned_rate = None if rate is None else _RATE_STEP ** math.floor(math.log(rate, _RATE_STEP))
        member = Member(
            secrets.token_hex(8),
            MemberDemand(f"device-{self._labels}", tuple(refs), planned_rate),
            refs,
            manifest.name,
            address=client,
        )
        running = self._running_session_for(member)
        if running is not None:
            return self._join_late(running, member)
        if self._batch is None:
            self._batch = _Batch()
            asyncio.get_running_loop().call_later(self.settings.multicast_window_s, self._close_batch, self._batch)
        batch = self._batch
        if len(batch.members) >= MAX_PENDING_MEMBERS:
            raise BadInput("too many devices are waiting to join; try again")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        batch.members.append(member)
        batch.answers[member.member_id] = answer
        try:
            return await answer
        except asyncio.CancelledError:
            if self._batch is batch:
                batch.members.remove(member)
                del batch.answers[member.member_id]
            else:
                for s in self.sessions.values():
                    self._drop_member(s, member.member_id)
            raise

    def leave(self, session_hex: str, member_id: str, *, expected_bytes: int, missed_bytes: int) -> dict[str, Any]:
        """A member is done (or gives up): it stops counting, and reports what it lost."""
        session = self.session(session_hex)
        if member_id not in session.members:
            raise NotFound(f"{member_id[:32]!r} is not a member of session {session_hex}")
        if not 0 <= missed_bytes <= expected_bytes <= sum(b.size for b in session.blocks):
            raise BadInput("0 <= missed_bytes <= expected_bytes <= the session's bytes must hold")
        self._drop_member(session, member_id)
        self.metrics.multicast_expected_bytes.inc(expected_bytes)
        self.metrics.multicast_missed_bytes.inc(missed_bytes)
        self._expected_bytes += expected_bytes
        self._missed_bytes += missed_bytes
        if self._expected_bytes:
            self.metrics.multicast_loss.set(self._missed_bytes / self._expected_bytes)
        return session.to_json()

    async def close(self) -> None:
        """Stop every session (the node is shutting down)."""
        self._closing = True
        tasks = [s.task for s in self.sessions.values() if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- planning ------------------------------------------------------------------------

    async def _blocks_of(self, manifest: ModelManifest) -> dict[str, BlockRef]:
        blocks = dict(manifest.unique_blocks())
        if manifest.base is not None:
            base = await self.manifests.get(manifest.base.name, manifest.base.revision)
            blocks.update(base.unique_blocks())
        return blocks

    def _close_batch(self, batch: _Batch) -> None:
        if self._batch is batch:
            self._batch = None
        live = [m for m in batch.members if not batch.answers[m.member_id].done()]
        if live:
            asyncio.get_running_loop().create_task(self._answer_batch(batch, live), name="multicast batch")

    async def _answer_batch(self, batch: _Batch, members: list[Member]) -> None:
        try:
            if self._closing:
                raise NotFound("the node is shutting down")
            s = self.settings
            sizes = {b: r.size for m in members for b, r in m.refs.items()}
            plan = await asyncio.to_thread(
                plan_delivery,
                [m.demand for m in members],
                sizes,
                egress_rate=self._link_rate(),
                multicast_rate=s.multicast_rate,
            )
            if self._closing:
                raise NotFound("the node is shutting down")
            answers = self._start_sessions(members, plan)
        except Exception as e:  # noqa: BLE001 - every waiting device must get an answer
            if not isinstance(e, NotFound):
                log.exception("planning a multicast batch failed")
            for m in members:
                if not batch.answers[m.member_id].done():
                    batch.answers[m.member_id].set_exception(e)
            return
        for m in members:
            if not batch.answers[m.member_id].done():
                batch.answers[m.member_id].set_result(answers[m.member_id])

    def _link_rate(self) -> float:
        return self.settings.egress_rate or self.settings.multicast_rate

    def _start_sessions(self, members: list[Member], plan: DeliveryPlan) -> dict[str, dict[str, Any]]:
        plan_json = self.last_plan = plan.to_json()
        log.info(
            "multicast batch of %d: %d groups, estimate %.2f s mean (%.2f s unicast only), %d bytes",
            len(members),
            len(plan.groups),
            plan.mean_completion_s,
            plan_json["unicast_only"]["mean_completion_s"],
            plan.egress_bytes,
        )
        by_label = {m.demand.member: m for m in members}
        answers: dict[str, dict[str, Any]] = {}
        for g in plan.groups:
            session = self._open_session(g, by_label, plan_json)
            for label in g.members:
                m = by_label[label]
                if session is None:
                    answers[m.member_id] = unicast_answer(m, plan_json)
                    continue
                session.add_member(m, until=time.monotonic() + self.lease_s)
                self.metrics.multicast_members.labels("batched").inc()
                answers[m.member_id] = self._answer(session, m, late=False)
        for m in members:
            answers.setdefault(m.member_id, unicast_answer(m, plan_json))
        self._count_members()
        return answers

    def _open_session(self, g: GroupPlan, by_label: dict[str, Member], plan: dict[str, Any]) -> Session | None:
        s = self.settings
        self._forget_old()
        assert s.multicast_group is not None
        used = {x.slot for x in self.sessions.values() if x.state in LIVE_STATES}
        free = [i for i in range(s.multicast_groups) if i not in used]
        if not free:
            log.warning(
                "all %d multicast groups are busy: %d devices get their blocks by unicast",
                s.multicast_groups,
                len(g.members),
            )
            return None
        refs = {b: r for label in g.members for b, r in by_label[label].refs.items()}
        session = Session(
            session_id=secrets.token_bytes(8),
            slot=free[0],
            group=group_address(s.multicast_group, free[0]),
            port=s.group_port,
            rate=g.rate,
            piece_bytes=s.piece_bytes,
            blocks=[refs[b] for b in g.blocks],
            model=by_label[g.members[0]].model,
            plan=plan,
        )
        self.sessions[session.hex] = session
        session.task = asyncio.get_running_loop().create_task(self._send(session), name=f"multicast {session.hex}")
        self.metrics.multicast_sessions_active.inc()
        return session

    def _answer(self, session: Session, m: Member, *, late: bool) -> dict[str, Any]:
        cursor = session.cursor if late else 0
        order = {r.block_id: i for i, r in enumerate(session.blocks)}
        multicast = [b for b in order if b in m.refs and order[b] >= cursor]
        repair = [b for b in order if b in m.refs and order[b] < cursor]
        in_session = set(multicast) | set(repair)
        return {
            "member": m.member_id,
            "session": session.to_json(),
            "multicast": multicast,
            "multicast_seq": [order[b] for b in multicast],
            "repair": repair,
            "unicast": [b for b in m.refs if b not in in_session],
            "late": late,
            "plan": session.plan,
        }

    def _running_session_for(self, member: Member) -> Session | None:
        """The session to join late: sending blocks this member wants, no faster than it takes them."""
        best, best_bytes = None, 0
        alone = min(member.demand.rate or math.inf, self._link_rate())
        for s in self.sessions.values():
            if s.state not in ("waiting", "sending") or len(s.members) >= MAX_SESSION_MEMBERS:
                continue
            if s.rate > alone or s.rate < _LATE_JOIN_MIN_SHARE * alone:
                continue  # faster than the device takes, or much slower than it would get alone
            ahead = sum(r.size for r in s.blocks[s.cursor :] if r.block_id in member.refs)
            if ahead > best_bytes:
                best, best_bytes = s, ahead
        return best

    def _join_late(self, session: Session, member: Member) -> dict[str, Any]:
        session.add_member(member, until=time.monotonic() + self.lease_s)
        self.metrics.multicast_members.labels("late").inc()
        self._count_members()
        log.info(
            "device %s joined multicast session %s late, at block %d of %d",
            member.member_id,
            session.hex,
            session.cursor,
            len(session.blocks),
        )
        return self._answer(session, member, late=True)

    # -- sending -------------------------------------------------------------------------

    async def _send(self, session: Session) -> None:
        s = self.settings
        result = "failed"
        try:
            if self._sock is None:
                self._sock = open_sender(interface=s.group_interface, ttl=s.multicast_ttl)
            pacers: list[Pacer] = [TokenBucket(session.rate)]
            if self.egress is not None:
                pacers.append(self.egress)
            session.sender = SessionSender(
                session=session.session_id,
                blocks=session.blocks,
                model=session.model,
                sock=self._sock,
                address=(session.group, session.port),
                piece_bytes=session.piece_bytes,
                pacers=pacers,
                cache=self.cache,
                metrics=self.metrics,
                drop_rate=s.multicast_test_drop,
                # Members must be live: joined devices that went silent (or never listened) stop it.
                still_wanted=lambda: bool(session.members) and time.monotonic() < session.live_until,
            )
            await asyncio.sleep(s.multicast_lead_s)  # members join the group meanwhile
            session.state = "sending"
            result = "done" if await self._send_passes(session, session.sender) else "abandoned"
        except asyncio.CancelledError:
            result = "abandoned"
            raise
        except Exception:
            # Members notice the failed state and fetch what they lack by repair.
            log.exception("multicast session %s failed at block %d", session.hex, session.cursor)
        finally:
            session.state = result
            session.ended_at = time.monotonic()
            self.metrics.multicast_sessions.labels(result).inc()
            self.metrics.multicast_sessions_active.dec()
            self._count_members()
            sender = session.sender
            log.info(
                "multicast session %s %s: %d bytes to %s:%d for %d members (%d dropped by the test hook)",
                session.hex,
                result,
                sender.sent_bytes if sender else 0,
                session.group,
                session.port,
                session.joined,
                sender.dropped_bytes if sender else 0,
            )

    async def _send_passes(self, session: Session, sender: SessionSender) -> bool:
        """The main pass, then repair passes of the pieces several members lack, while any do."""
        if not await sender.run():
            return False
        for repair_round in range(1, self.settings.multicast_repair_passes + 1):
            if not session.members or time.monotonic() >= session.live_until:
                break  # everybody has what they wanted and left, or went silent
            session.nack_reports.clear()
            session.nacked.clear()
            session.repair_round = repair_round
            session.state = "repairing"  # before END: members answer it with their NACK at once
            await sender.end(repair_round=repair_round, final=False)
            await asyncio.sleep(self.settings.multicast_nack_window_s)  # members report what they lack
            # Lacked by one member only: its own unicast repair costs the same. Off the loop:
            # the answer is as long as the pieces lacked.
            wanted = await asyncio.to_thread(repeated_pieces, list(session.nack_reports), at_least=2)
            if not wanted:
                break
            log.info(
                "multicast session %s, repair round %d: %d members reported losses; resending %d pieces",
                session.hex,
                repair_round,
                len(session.nacked),
                sum(len(v) for v in wanted.values()),
            )
            if not await sender.resend(wanted):
                return False
        await sender.end(repair_round=session.repair_round + 1, final=True)
        return True

    def nack(self, session_hex: str, member_id: str, missing: Sequence[object], repair_round: int) -> dict[str, Any]:
        """A member's report of the pieces it lacks when `repair_round` starts: [[block seq, first, end piece], ...]."""
        session = self.session(session_hex)
        if member_id not in session.members:
            raise NotFound(f"{member_id[:32]!r} is not a member of session {session_hex}")
        report = merge_report(missing, [-(-b.size // session.piece_bytes) for b in session.blocks])
        session.live_until = time.monotonic() + self.lease_s
        accepted = (
            session.state == "repairing" and repair_round == session.repair_round and member_id not in session.nacked
        )
        if accepted:
            session.nacked.add(member_id)
            session.nack_reports.append(report)
            self.metrics.multicast_nacks.inc()
        return {**session.to_json(), "accepted": accepted}

    def _drop_member(self, session: Session, member_id: str) -> None:
        if session.members.pop(member_id, None) is not None:
            self._count_members()

    def _count_members(self) -> None:
        self.metrics.multicast_members_active.set(
            sum(len(s.members) for s in self.sessions.values() if s.state in LIVE_STATES)
        )

    def _forget_old(self) -> None:
        now = time.monotonic()
        for key, s in list(self.sessions.items()):
            if s.ended_at is not None and now - s.ended_at > _KEEP_FINISHED_S:
                del self.sessions[key]
