"""Server processes for the benchmarks: free loopback ports and stopping what was started."""

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ("free_port", "run_cachenet", "start_cachenet", "start_nginx", "stop_processes", "wait_ready")

# The anchor the serving benchmarks compare with: nginx with sendfile, 2 workers, no access log.
_NGINX_CONF = """\
daemon off;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location {location} {{ alias {folder}/; }}
    }}
}}
"""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_processes(procs: dict[str, "subprocess.Popen[bytes]"]) -> None:
    """Stop every process (nginx gracefully with SIGQUIT, ours with SIGTERM), killing stragglers."""
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_cachenet(tmp: Path, name: str, argv: list[str]) -> "subprocess.Popen[bytes]":
    """Start `python -m cachenet ARGV` in the background, its output in `tmp/<name>.log`."""
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
    return subprocess.Popen([sys.executable, "-m", "cachenet", *argv], stdout=log, stderr=subprocess.STDOUT)


def run_cachenet(argv: list[str]) -> None:
    """Run `python -m cachenet ARGV` to completion (raises on failure)."""
    subprocess.run([sys.executable, "-m", "cachenet", *argv], check=True, stdout=subprocess.DEVNULL)


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    """Wait until a server answers `/healthz` (or, for a `/files/` URL, the file) with 200."""
    deadline = time.monotonic() + timeout_s
    probe = url if "/files/" in url else url + "/healthz"
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(probe, method="HEAD" if "/files/" in url else "GET")
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as e:
            error = e
            time.sleep(0.2)
    sys.exit(f"{url} not ready after {timeout_s} s: {error}")


def start_nginx(tmp: Path, port: int, *, location: str, folder: Path) -> "subprocess.Popen[bytes]":
    """Start nginx on 127.0.0.1:`port` serving `folder` under the URL path `location` (ending in /)."""
    conf = tmp / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(tmp=tmp, port=port, location=location, folder=folder))
    log = open(tmp / "nginx.log", "wb")  # noqa: SIM115 - the child holds it
    return subprocess.Popen(
        ["nginx", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
