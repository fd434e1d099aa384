"""Multicast delivery end to end: a real edge node sends to real UDP multicast groups on loopback.

Devices are `clients.pull` calls in this process, each with its own block store; the
edge node is a real server (aiohttp test server) in front of a real origin.
"""

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from cachenet.blockstore import BlockStore
from cachenet.edge.multicast.routes import hub_key
from cachenet.errors import UpstreamUnavailable
from cachenet.multicast.sockets import open_sender
from cachenet.multicast.wire import encode_piece
from clients import PullReport, PullSettings, pull
from clients.multicast.session import MulticastOptions
from registry.keys import catalogue_key
from tests.clients.support import file_hashes, publish, url_of
from tests.conftest import metric
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

FAST = PullSettings(fsync=False)


async def _publish_variants(origin: TestServer, tmp_path: Path, n: int) -> dict[str, Path]:
    await publish(origin, real_model_dir(), REAL_MODEL_NAME)
    variants = {}
    for i in range(n):
        folder = make_lora_adapter(tmp_path / f"adapter-{i}", seed=100 + i)
        await publish(origin, folder, f"org/variant-{i}", base=REAL_MODEL_NAME)
        variants[f"org/variant-{i}"] = folder
    return variants


async def _edge(edge_factory: Callable[..., Any], origin: TestServer, **settings: Any) -> TestServer:
    """An edge node holding up to 1 GiB that multicasts at 40 MB/s unless told otherwise."""
    return await edge_factory(origin=origin, **{"capacity_bytes": 1 << 30, "multicast_rate": 40e6, **settings})  # type: ignore[no-any-return]


def _ideal_bytes(origin: TestServer, names: list[str]) -> int:
    """Backbone + every adapter's own blocks: each distinct block once."""
    catalogue = origin.app[catalogue_key]
    blocks = dict(catalogue.manifest(REAL_MODEL_NAME).unique_blocks())
    for name in names:
        blocks.update(catalogue.manifest(name).unique_blocks())
    return sum(r.size for r in blocks.values())


def _expected_files(adapter: Path) -> dict[str, str]:
    return {**file_hashes(real_model_dir()), **file_hashes(adapter)}


def _egress(edge: TestServer) -> dict[str, float]:
    kinds = ("multicast", "multicast_repair", "unicast", "repair")
    return {k: metric(edge, "cachenet_edge_egress_bytes_total", kind=k) for k in kinds}


async def _pull(edge: TestServer, name: str, tmp_path: Path, tag: str, **options: Any) -> Any:
    return await pull(
        name,
        sources=[url_of(edge)],
        out_dir=tmp_path / "out" / tag,
        store=BlockStore(tmp_path / "devices" / tag, fsync=False),
        settings=FAST,
        multicast=MulticastOptions(**{"mode": "on", **options}),
        progress=False,
    )


async def test_eight_lora_variants_at_once_send_the_backbone_once(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    variants = await _publish_variants(origin_server, tmp_path, 8)
    edge = await _edge(edge_factory, origin_server, multicast_window_s=0.5)

    reports = await asyncio.gather(*(_pull(edge, name, tmp_path, name.rsplit("/", 1)[-1]) for name in variants))

    for name, report in zip(variants, reports, strict=True):
        tag = name.rsplit("/", 1)[-1]
        assert file_hashes(tmp_path / "out" / tag) == _expected_files(variants[name])
        assert report.multicast is not None and report.multicast.session is not None
        assert report.multicast.multicast_bytes > 80e6  # the backbone came by multicast
    assert len({r.multicast.session for r in reports}) == 1  # one batch, one group
    egress = _egress(edge)
    ideal = _ideal_bytes(origin_server, list(variants))
    total = sum(egress.values())
    assert ideal <= total <= 1.10 * ideal, (egress, ideal)
    # Unicast alone would have sent the backbone eight times.
    assert total < 0.2 * sum(r.needed_bytes for r in reports)
    assert metric(edge, "cachenet_edge_multicast_members_total", joined="batched") == 8
    assert metric(edge, "cachenet_edge_multicast_sessions_total", result="done") == 1
    plan = edge.app[hub_key].last_plan
    assert plan is not None and plan["estimate"]["egress_bytes"] < plan["unicast_only"]["egress_bytes"] / 4


async def test_lost_datagrams_are_repaired_by_range_requests(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    variants = await _publish_variants(origin_server, tmp_path, 4)
    edge = await _edge(edge_factory, origin_server, multicast_window_s=0.5, multicast_test_drop=0.05)

    reports = await asyncio.gather(*(_pull(edge, name, tmp_path, name.rsplit("/", 1)[-1]) for name in variants))

    for name, report in zip(variants, reports, strict=True):
        assert file_hashes(tmp_path / "out" / name.rsplit("/", 1)[-1]) == _expected_files(variants[name])
        assert report.multicast is not None and report.multicast.session is not None
    dropped = metric(edge, "cachenet_edge_multicast_test_dropped_bytes_total", kind="multicast")
    dropped_again = metric(edge, "cachenet_edge_multicast_test_dropped_bytes_total", kind="multicast_repair")
    egress = _egress(edge)
    assert 0.03 * egress["multicast"] < dropped < 0.07 * egress["multicast"]
    # Every device lacked what the sender dropped (perhaps a few datagrams more) and said so; the
    # node sent those pieces once more to the group (and what that pass lost, once more...), so
    # devices fetched next to nothing by unicast.
    assert dropped <= egress["multicast_repair"] <= dropped * 1.2 + 1024 * 1024
    assert dropped_again > 0  # the repair passes lose datagrams too
    for report in reports:
        mc = report.multicast
        assert dropped <= mc.missed_bytes <= dropped * 1.2 + 1024 * 1024, (mc, dropped)
        assert mc.repair_bytes <= 0.1 * dropped + 1024 * 1024, (mc, dropped)
    repair_total = egress["multicast_repair"] + egress["repair"]
    assert repair_total <= 1.5 * dropped  # not once per device
    assert metric(edge, "cachenet_edge_multicast_nacks_total") >= 2 * len(reports)  # two rounds at least
    repaired = metric(edge, "cachenet_edge_egress_bytes_total", kind="repair")
    assert repaired == sum(r.multicast.repair_bytes for r in reports)
    assert metric(edge, "cachenet_edge_multicast_loss_ratio") == pytest.approx(
        sum(r.multicast.missed_bytes for r in reports) / sum(r.multicast.expected_bytes for r in reports)
    )


async def _wait_for_cursor(edge: TestServer, at_least: int) -> str:
    hub = edge.app[hub_key]
    for _ in range(600):
        sessions = [s for s in hub.sessions.values() if s.state == "sending" and s.cursor >= at_least]
        if sessions:
            return sessions[0].hex
        await asyncio.sleep(0.05)
    raise AssertionError("no session got that far")


async def test_a_late_joiner_gets_the_start_by_repair_and_a_leaver_stalls_nobody(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    variants = await _publish_variants(origin_server, tmp_path, 4)
    names = list(variants)
    edge = await _edge(edge_factory, origin_server, multicast_rate=15e6, multicast_window_s=0.3)
    first = [asyncio.create_task(_pull(edge, n, tmp_path, n.rsplit("/", 1)[-1])) for n in names[:3]]
    session = await _wait_for_cursor(edge, 1)  # the first (largest) block is out
    leaver = first.pop()
    leaver.cancel()
    late = await _pull(edge, names[3], tmp_path, "late")
    early = await asyncio.gather(*first)

    state = edge.app[hub_key].session(session)
    for _ in range(100):  # the node may still be waiting for loss reports of its last pass
        if state.state != "repairing":
            break
        await asyncio.sleep(0.05)
    assert state.state == "done" and state.joined == 4 and not state.members
    for name, report in [*zip(names[:2], early, strict=True), (names[3], late)]:
        tag = "late" if report is late else name.rsplit("/", 1)[-1]
        assert file_hashes(tmp_path / "out" / tag) == _expected_files(variants[name])
        assert report.multicast.session == session
    mc = late.multicast
    assert mc.late and mc.repaired_blocks >= 1 and mc.multicast_bytes > 10e6
    first_block = state.blocks[0].size
    assert mc.repair_bytes >= first_block
    assert metric(edge, "cachenet_edge_multicast_members_total", joined="late") == 1
    assert metric(edge, "cachenet_edge_multicast_members_active") == 0
    with pytest.raises(asyncio.CancelledError):
        await leaver
    assert not list((tmp_path / "devices" / names[2].rsplit("/", 1)[-1]).rglob("*.tmp"))


async def test_a_device_that_cannot_join_the_group_gets_everything_by_unicast(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    variants = await _publish_variants(origin_server, tmp_path, 3)
    names = list(variants)
    edge = await _edge(edge_factory, origin_server, multicast_window_s=0.5)
    # 192.0.2.77 (TEST-NET-1) is no interface of this machine: joining a group there fails.
    results: list[PullReport | BaseException] = await asyncio.gather(
        _pull(edge, names[0], tmp_path, "ok"),
        _pull(edge, names[1], tmp_path, "stranded", mode="auto", interface="192.0.2.77"),
        _pull(edge, names[2], tmp_path, "strict", interface="192.0.2.77"),
        return_exceptions=True,
    )
    ok, stranded, strict = results
    assert isinstance(ok, PullReport) and isinstance(stranded, PullReport), (ok, stranded)
    assert ok.multicast is not None and stranded.multicast is not None
    assert file_hashes(tmp_path / "out" / "ok") == _expected_files(variants[names[0]])
    assert file_hashes(tmp_path / "out" / "stranded") == _expected_files(variants[names[1]])
    assert stranded.multicast.session is None and "cannot join" in (stranded.multicast.fallback or "")
    assert stranded.fetched_bytes == stranded.needed_bytes
    assert isinstance(strict, UpstreamUnavailable) and "multicast was required" in str(strict)
    assert ok.multicast.session is not None


async def test_a_lone_device_is_planned_unicast_and_the_origin_offers_no_multicast(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    variants = await _publish_variants(origin_server, tmp_path, 1)
    name = next(iter(variants))
    edge = await _edge(edge_factory, origin_server, multicast_window_s=0.05)
    alone = await _pull(edge, name, tmp_path, "alone")
    assert alone.multicast.session is None and "planned unicast" in (alone.multicast.fallback or "")
    assert file_hashes(tmp_path / "out" / "alone") == _expected_files(variants[name])
    assert metric(edge, "cachenet_edge_egress_bytes_total", kind="unicast") == alone.fetched_bytes
    with pytest.raises(UpstreamUnavailable, match="no source announces multicast"):
        await _pull(origin_server, name, tmp_path, "strict-origin")
    auto = await pull(
        name,
        sources=[url_of(origin_server)],
        store=BlockStore(tmp_path / "devices" / "auto"),
        settings=FAST,
        progress=False,
    )
    assert auto.multicast is not None
    assert auto.fetched_bytes == auto.needed_bytes and auto.multicast.session is None


async def test_forged_pieces_make_the_block_fail_verification_and_it_comes_whole_by_unicast(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    variants = await _publish_variants(origin_server, tmp_path, 2)
    names = list(variants)
    edge = await _edge(edge_factory, origin_server, multicast_window_s=0.3, multicast_lead_s=1.0)
    hub = edge.app[hub_key]

    async def forge() -> int:
        """Anyone on the network can send to the group: send a wrong first piece before the real one."""
        sent = 0
        sock = open_sender(interface="127.0.0.1", ttl=1)
        try:
            while True:
                waiting = [s for s in hub.sessions.values() if s.state == "waiting"]
                if not waiting:
                    if sent and not any(s.state == "waiting" for s in hub.sessions.values()):
                        return sent
                    await asyncio.sleep(0.01)
                    continue
                s = waiting[0]
                first = s.blocks[0]
                piece = encode_piece(s.session_id, bytes.fromhex(first.block_id), 0, 0, b"\0" * s.piece_bytes)
                sock.sendto(piece, (s.group, s.port))
                sent += 1
                await asyncio.sleep(0.02)
        finally:
            sock.close()

    forger = asyncio.create_task(forge())
    reports = await asyncio.gather(*(_pull(edge, n, tmp_path, n.rsplit("/", 1)[-1]) for n in names))
    assert await forger > 0
    for name, report in zip(names, reports, strict=True):
        assert file_hashes(tmp_path / "out" / name.rsplit("/", 1)[-1]) == _expected_files(variants[name])
        assert report.multicast.refused_blocks == 1  # the forged block, fetched again whole


async def test_the_cli_pulls_by_multicast_and_reports_it(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    variants = await _publish_variants(origin_server, tmp_path, 2)
    edge = await _edge(edge_factory, origin_server, multicast_window_s=3.0)  # two CLI processes start within it

    async def cli(i: int, name: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cachenet",
            "pull",
            name,
            "--source",
            url_of(edge),
            "--store",
            str(tmp_path / f"cli-store-{i}"),
            "--out",
            str(tmp_path / f"cli-out-{i}"),
            "--multicast",
            "on",
            "--link-rate",
            "400Mbit",
            "--json",
            "--no-fsync",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        return json.loads(out)  # type: ignore[no-any-return]

    reports = await asyncio.gather(*(cli(i, name) for i, name in enumerate(variants)))
    for i, (name, report) in enumerate(zip(variants, reports, strict=True)):
        assert file_hashes(tmp_path / f"cli-out-{i}") == _expected_files(variants[name])
        assert report["multicast"]["session"] is not None and report["multicast"]["multicast_bytes"] > 80e6
    assert reports[0]["multicast"]["session"] == reports[1]["multicast"]["session"]
