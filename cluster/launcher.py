"""Starting and stopping the local cluster's server processes, with no orphans left behind."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from cachenet.errors import UpstreamUnavailable

__all__ = ("Cluster", "ServerProcess", "exit_line", "taken_ports")
log = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0


@dataclass
class ServerProcess:
    """One server of the cluster: its role, URL, command line and log file."""

    name: str
    url: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class Cluster:
    """Processes started together and stopped together (SIGTERM, then SIGKILL after a grace period)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.servers: list[ServerProcess] = []

    def start(self, name: str, url: str, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> ServerProcess:
        """Start `python -m cachenet ARGS` (with `env` added to ours) and wait until its /healthz answers.

        Secrets go in `env`, never in `args`: a command line is readable by every user (`ps`).
        """
        log_path = self.data_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(name, url, [sys.executable, "-m", "cachenet", *args], log_path)
        with open(log_path, "ab") as out:
            server.process = subprocess.Popen(
                server.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            )
        self.servers.append(server)
        self._wait_healthy(server)
        return server

    def dead(self) -> list[ServerProcess]:
        """The servers whose process has exited."""
        return [s for s in self.servers if s.process is None or s.process.poll() is not None]

    def stop(self) -> None:
        """Stop every server: SIGTERM, wait, then SIGKILL whatever is left."""
        running = [s for s in self.servers if s.process is not None and s.process.poll() is None]
        for s in running:
            assert s.process is not None
            s.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for s in running:
            assert s.process is not None
            try:
                s.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", s.name)
                s.process.kill()
                s.process.wait()
        self.servers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_healthy(self, server: ServerProcess) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert server.process is not None
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise UpstreamUnavailable(exit_line(server))
            try:
                with urllib.request.urlopen(server.url + "/healthz", timeout=1) as resp:
                    # Healthy only if our child still runs (another process may hold the port).
                    if resp.status == 200 and server.process.poll() is None:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise UpstreamUnavailable(f"{server.name} did not become healthy within {START_TIMEOUT_S:.0f} s")


def exit_line(server: ServerProcess) -> str:
    """One line saying that a server exited, why (the last line of its log) and where its log is."""
    code = server.process.returncode if server.process is not None else None
    try:
        lines = [ln.strip() for ln in server.log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    last = lines[-1] if lines else "no output"
    return f"{server.name} exited with status {code} ({last[-300:]}); its log is {server.log_path}"


def taken_ports(host: str, ports: Sequence[int]) -> list[int]:
    """The ports in `ports` that something already listens on (or that cannot be bound)."""
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers: TIME_WAIT is free
            try:
                sock.bind((host, port))
            except OSError:
                taken.append(port)
    return taken
