"""Hostile clients against one edge node while a normal device pulls (issue 14).

One `origin serve` and one `edge serve` subprocess on loopback. A normal device (source
address 127.0.0.2) pulls blocks of a model the node holds, one after another, checking
each against its XXH3-128 id, for the whole run. Meanwhile four attacks run one after
the other, `--seconds` each, from 127.0.0.3:

- slow readers: 200 connections ask for a 16 MiB block and read nothing (receive buffer 4 KiB);
- slowloris: 300 connections send a request's headers one byte every few seconds;
- cell flood: requests with a new, distinct cell id each (valid, too long, or malformed);
- join/NACK storm: multicast joins and NACKs of 8,000 whole-block ranges, as fast as answered.

Per phase: the device's block latency (p50, p99, max), its errors and 5xx (must be 0), and
the edge's peak resident memory (VmRSS, sampled 4 times a second). Ports: 22700-22799.

    python -m bench.reliability_hostile [--seconds 60]
"""

import argparse
import asyncio
import io
import json
import os
import random
import secrets
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import uvloop
import xxhash

from bench.machine import write_result
from bench.reliability_crash import TOKEN, Server
from cachenet.manifest import ModelManifest
from registry.publish import HttpTarget, publish_path

__all__ = ("main", "run_hostile")

ORIGIN_PORT: Final = 22701
EDGE_PORT: Final = 22702
DEVICE_ADDRESS: Final = "127.0.0.2"
ATTACKER_ADDRESS: Final = "127.0.0.3"
SLOW_READERS: Final = 200
SLOWLORIS: Final = 300
BIG_BLOCK_BYTES: Final = 16 * 1024 * 1024
DEVICE_BLOCK_BYTES: Final = 1024 * 1024
PHASES: Final = ("slow_readers", "slowloris", "cell_flood", "join_nack_storm")
_STORM = "both"


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    latencies_s: list[float] = field(default_factory=list)
    device_requests: int = 0
    device_errors: int = 0
    device_5xx: int = 0
    corrupt: int = 0
    peak_rss_kib: int = 0
    attacker: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Figures for the JSON result (ms, MiB)."""
        lat = sorted(self.latencies_s)

        def q(x: float) -> float:
            return round(lat[min(len(lat) - 1, int(x * len(lat)))] * 1e3, 1) if lat else 0.0

        return {
            "device_requests": self.device_requests,
            "device_errors": self.device_errors,
            "device_5xx": self.device_5xx,
            "corrupt": self.corrupt,
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "max_ms": round(lat[-1] * 1e3, 1) if lat else 0.0,
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "attacker_answers": dict(sorted(self.attacker.items())),
            "examples": self.examples[:5],
        }


def run_hostile(work: Path, *, seconds: float, phases: tuple[str, ...] = PHASES) -> list[Phase]:
    """Start an origin and an edge, publish, warm, run every phase, stop everything."""
    origin = Server(
        ["origin", "serve", "--data", str(work / "origin"), "--port", str(ORIGIN_PORT), "--token", TOKEN],
        port=ORIGIN_PORT,
        log_path=work / "logs" / "origin.log",
    )
    edge_argv = ["edge", "serve", "--node-id", "hostile-edge", "--data", str(work / "edge"), "--capacity", "2GiB"]
    edge_argv += ["--origin", origin.url, "--token", TOKEN, "--port", str(EDGE_PORT)]
    edge = Server(edge_argv, port=EDGE_PORT, log_path=work / "logs" / "edge.log")
    try:
        origin.start()
        edge.start()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            big, device = runner.run(_publish(work, origin.url))
            runner.run(_warm(edge.url, [*big, *device]))
            return runner.run(_phases(edge.url, edge.pid, big, device, seconds=seconds, names=phases))
    finally:
        edge.stop()
        origin.stop()


async def _publish(work: Path, origin_url: str) -> tuple[list[str], list[str]]:
    rng = random.Random(14)
    folders = {"hostile/big": (BIG_BLOCK_BYTES, 4), "hostile/device": (DEVICE_BLOCK_BYTES, 64)}
    target = HttpTarget(origin_url, TOKEN)
    out: list[list[str]] = []
    try:
        for name, (block, count) in folders.items():
            folder = work / "models" / name.replace("/", "-")
            folder.mkdir(parents=True)
            (folder / "weights.bin").write_bytes(rng.randbytes(block * count))
            (folder / "config.json").write_text('{"model_type": "hostile"}')
            await publish_path(folder, name=name, target=target, max_block_size=block, progress=False)
            async with target.session.get(f"{origin_url}/v1/models/{name}/revisions/main") as resp:
                manifest = ModelManifest.from_bytes(await resp.read())
            out.append([r.block_id for f in manifest.files if f.path == "weights.bin" for r in f.blocks])
    finally:
        await target.close()
    return out[0], out[1]


async def _warm(edge_url: str, blocks: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        for b in blocks:
            async with s.get(f"{edge_url}/v1/blocks/{b}") as resp:
                assert resp.status == 200, (b, resp.status)
                await resp.read()


async def _phases(
    edge_url: str, pid: int, big: list[str], device: list[str], *, seconds: float, names: tuple[str, ...]
) -> list[Phase]:
    phases = []
    for name in names:
        phase = Phase(name)
        stop = asyncio.Event()
        attack = {
            "slow_readers": lambda p, st: _slow_readers(p, st, big[0]),
            "slowloris": _slowloris,
            "cell_flood": lambda p, st: _cell_flood(p, st, edge_url),
            "join_nack_storm": lambda p, st: _join_nack_storm(p, st, edge_url, device),
        }[name]
        tasks = [
            asyncio.create_task(attack(phase, stop)),
            asyncio.create_task(_device(phase, stop, edge_url, device)),
            asyncio.create_task(_rss(phase, stop, pid)),
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        phases.append(phase)
        print(name, json.dumps(phase.summary()), file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)
    return phases


async def _device(phase: Phase, stop: asyncio.Event, edge_url: str, blocks: list[str]) -> None:
    rng = random.Random(1)
    connector = aiohttp.TCPConnector(local_addr=(DEVICE_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
        while not stop.is_set():
            block = rng.choice(blocks)
            t0 = time.perf_counter()
            try:
                async with s.get(f"{edge_url}/v1/blocks/{block}") as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                phase.device_errors += 1
                phase.examples.append(f"device: {e!r}")
                continue
            phase.latencies_s.append(time.perf_counter() - t0)
            phase.device_requests += 1
            if status >= 500:
                phase.device_5xx += 1
                phase.examples.append(f"device: {status}")
            elif status != 200:
                phase.device_errors += 1
            elif xxhash.xxh3_128_hexdigest(body) != block:
                phase.corrupt += 1
            await asyncio.sleep(0.02)


async def _rss(phase: Phase, stop: asyncio.Event, pid: int) -> None:
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                phase.peak_rss_kib = max(phase.peak_rss_kib, int(line.split()[1]))
        await asyncio.sleep(0.25)


def _raw_socket(rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((ATTACKER_ADDRESS, 0))
    sock.setblocking(False)
    return sock


async def _slow_readers(phase: Phase, stop: asyncio.Event, block: str) -> None:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    try:
        for _ in range(SLOW_READERS):
            sock = _raw_socket(4096)
            await loop.sock_connect(sock, ("127.0.0.1", EDGE_PORT))
            await loop.sock_sendall(sock, f"GET /v1/blocks/{block} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(sock)
        phase.attacker["slow_readers_open"] = len(socks)
        await stop.wait()
    finally:
        for sock in socks:
            sock.close()


async def _slowloris(phase: Phase, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    try:
        for _ in range(SLOWLORIS):
            sock = _raw_socket()
            await loop.sock_connect(sock, ("127.0.0.1", EDGE_PORT))
            await loop.sock_sendall(sock, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        phase.attacker["slowloris_open"] = len(socks)
        while not stop.is_set():
            for sock in list(socks):
                try:
                    sock.send(b"X")
                except OSError:
                    socks.remove(sock)
                    phase.attacker["slowloris_cut"] = phase.attacker.get("slowloris_cut", 0) + 1
            try:
                await asyncio.wait_for(stop.wait(), 5.0)
            except TimeoutError:
                pass
    finally:
        for sock in socks:
            sock.close()


async def _count(phase: Phase, status: int) -> None:
    key = f"http_{status}"
    phase.attacker[key] = phase.attacker.get(key, 0) + 1


async def _cell_flood(phase: Phase, stop: asyncio.Event, edge_url: str) -> None:
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER_ADDRESS, 0), limit=32)
    url = f"{edge_url}/hostile/device/resolve/main/config.json"

    async def worker(s: aiohttp.ClientSession, k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            cell = random.choice(
                [f"cell-{k}-{n}-{secrets.token_hex(8)}", "c" * 5000 + secrets.token_hex(8), f"bad cell {n}#"]
            )
            try:
                async with s.get(url, headers={"X-Cachenet-Cell": cell}) as resp:
                    await resp.read()
                    await _count(phase, resp.status)
            except (aiohttp.ClientError, TimeoutError, OSError):
                phase.attacker["errors"] = phase.attacker.get("errors", 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
        await asyncio.gather(*(worker(s, k) for k in range(32)))
    async with aiohttp.ClientSession() as s, s.get(f"{edge_url}/v1/node/demand") as resp:
        phase.attacker["demand_body_bytes"] = len(await resp.read())


async def _join_nack_storm(phase: Phase, stop: asyncio.Event, edge_url: str, blocks: list[str]) -> None:
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER_ADDRESS, 0), limit=16)
    nack_body = json.dumps({"member": "0" * 16, "round": 1, "missing": [[0, 0, 64]] * 8_000}).encode()

    async def worker(s: aiohttp.ClientSession, k: int) -> None:
        session = "0" * 16
        while not stop.is_set():
            try:
                if (k % 2 == 0 or _STORM == "join") and _STORM != "nack":
                    body = json.dumps({"model": "hostile/device", "blocks": random.sample(blocks, 8)}).encode()
                    async with s.post(
                        f"{edge_url}/v1/multicast/join",
                        data=io.BytesIO(body),
                        headers={"Content-Type": "application/json"},
                    ) as resp:
                        doc = await resp.json(content_type=None)
                        await _count(phase, resp.status)
                        if resp.status == 200 and doc.get("session"):
                            session = doc["session"]["session"]
                else:
                    async with s.post(
                        f"{edge_url}/v1/multicast/sessions/{session}/nack",
                        data=io.BytesIO(nack_body),
                        headers={"Content-Type": "application/json"},
                    ) as resp:
                        await resp.read()
                        await _count(phase, resp.status)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                phase.attacker["errors"] = phase.attacker.get("errors", 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
        await asyncio.gather(*(worker(s, k) for k in range(16)))


def main() -> None:
    """Run every phase and write bench/results/reliability_hostile.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per phase (default 60)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset (default: all)")
    parser.add_argument("--storm", choices=("both", "join", "nack"), default="both", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global _STORM
    _STORM = args.storm
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="cachenet-hostile-"))
    try:
        phases = run_hostile(work, seconds=args.seconds, phases=tuple(args.phases.split(",")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summaries = {p.name: p.summary() for p in phases}
    worst_p99 = max(s["p99_ms"] for s in summaries.values())
    peak_rss = max(s["peak_rss_mib"] for s in summaries.values())
    bad = sum(s["device_errors"] + s["device_5xx"] + s["corrupt"] for s in summaries.values())
    path = write_result(
        "reliability_hostile",
        {
            "seconds_per_phase": args.seconds,
            "phases": summaries,
            "worst_device_p99_ms": worst_p99,
            "peak_edge_rss_mib": peak_rss,
            "device_errors_5xx_or_corrupt": bad,
            "pass": worst_p99 < 1000 and peak_rss < 300 and bad == 0,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "notes": "one client process (uvloop) on the same 2-vCPU machine as the edge and the origin, "
            "shared with other work; the device pulls 1 MiB blocks the node holds, 20 ms apart, from 127.0.0.2; "
            "attackers connect from 127.0.0.3; RSS is the edge's VmRSS sampled every 0.25 s.",
        },
    )
    print(path)


if __name__ == "__main__":
    main()
