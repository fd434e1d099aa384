"""Every server can serve HTTPS (`--tls-cert/--tls-key`); an edge node reaches an HTTPS origin."""

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.terminate()
    for p in started:
        p.wait(timeout=10)


def _get_json(url: str, context: ssl.SSLContext, deadline_s: float = 30) -> dict[str, object]:
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as resp:
                doc: dict[str, object] = json.loads(resp.read())
                return doc
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def test_origin_and_edge_over_https(
    tmp_path: Path, certificate: tuple[Path, Path], processes: list[subprocess.Popen[bytes]]
) -> None:
    cert, key = certificate
    trust = ssl.create_default_context(cafile=str(cert))
    origin_port, edge_port = _free_port(), _free_port()
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    processes.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cachenet",
                "origin",
                "serve",
                "--data",
                str(tmp_path / "o"),
                "--port",
                str(origin_port),
                *tls,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    origin = f"https://127.0.0.1:{origin_port}"
    assert _get_json(f"{origin}/healthz", trust)["role"] == "origin"
    env = {**os.environ, "SSL_CERT_FILE": str(cert)}  # the edge trusts the test certificate
    processes.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cachenet",
                "edge",
                "serve",
                "--data",
                str(tmp_path / "e"),
                "--origin",
                origin,
                "--port",
                str(edge_port),
                "--capacity",
                "10MB",
                *tls,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    edge = f"https://127.0.0.1:{edge_port}"
    assert _get_json(f"{edge}/healthz", trust)["role"] == "edge"
    assert _get_json(f"{edge}/v1/models", trust) == {"models": []}  # relayed from the HTTPS origin
    with pytest.raises(OSError):  # plain HTTP is not spoken on a TLS port
        urllib.request.urlopen(f"http://127.0.0.1:{origin_port}/healthz", timeout=2)
