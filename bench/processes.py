"""Server processes for the benchmarks: free loopback ports and stopping what was started."""

import signal
import socket
import subprocess

__all__ = ("free_port", "stop_processes")


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
