"""Helpers for the device-client tests: publishing, comparing folders, server subprocesses."""

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cluster.launcher import taken_ports
from registry.chunking import list_folder_files
from registry.publish import HttpTarget, PublishReport, publish_path
from tests.conftest import OPERATOR_TOKEN

__all__ = (
    "ServerProcess",
    "file_hashes",
    "free_port",
    "free_port_block",
    "publish",
    "remote_metric",
    "server_process",
    "url_of",
)


def url_of(server: TestServer) -> str:
    """Base URL of a test server."""
    return str(server.make_url("")).rstrip("/")


async def publish(origin: TestServer, path: Path, name: str, **kw: Any) -> PublishReport:
    """Publish a folder to a running origin."""
    target = HttpTarget(url_of(origin), OPERATOR_TOKEN)
    try:
        return await publish_path(path, name=name, target=target, progress=False, **kw)
    finally:
        await target.close()


def file_hashes(folder: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under `folder` (temp files would show up too)."""
    return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for p, rel in list_folder_files(folder)}


def free_port_block(n: int) -> int:
    """The first of `n` consecutive loopback ports that are all free now (for `cachenet up --base-port`)."""
    for _ in range(50):
        base = free_port()
        if base + n < 65000 and not taken_ports("127.0.0.1", range(base, base + n)):
            return base
    raise RuntimeError("no free port block")


def free_port() -> int:
    """A TCP port the kernel just handed out on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A `python -m cachenet ...` server subprocess."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def kill(self) -> None:
        """SIGKILL: the server dies mid-transfer, no graceful shutdown."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@asynccontextmanager
async def server_process(args: list[str], log_path: Path, *, port: int) -> AsyncIterator[ServerProcess]:
    """Start a cachenet server subprocess; wait (without blocking the loop) until it is healthy."""
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cachenet", *args, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ServerProcess(proc, url, log_path)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
                try:
                    async with s.get(f"{url}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def remote_metric(url: str, name: str) -> float:
    """Sum of a Prometheus sample over a server's /metrics (for servers in other processes)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )
