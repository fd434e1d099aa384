"""Multicast on the loopback interface: checked once, switched on (as root) where the kernel needs it."""

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from cachenet.multicast.sockets import open_receiver, open_sender

_PROBE_GROUP = "239.255.254.1"


def _loopback_multicast_works() -> bool:
    port = _free_udp_port()
    try:
        receiver = open_receiver(_PROBE_GROUP, port, interface="127.0.0.1", timeout_s=0.5)
    except OSError:
        return False
    sender = open_sender(interface="127.0.0.1", ttl=1)
    try:
        sender.sendto(b"probe", (_PROBE_GROUP, port))
        return receiver.recv(64) == b"probe"
    except OSError:
        return False
    finally:
        sender.close()
        receiver.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session", autouse=True)
def loopback_multicast() -> Iterator[None]:
    """Make sure datagrams sent to a group on 127.0.0.1 come back to its members; undo what it changed."""
    if _loopback_multicast_works():
        yield
        return
    if os.geteuid() != 0:
        pytest.fail("multicast does not work on the loopback interface here, and only root can switch it on")
    added = subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"], capture_output=True).returncode == 0
    subprocess.run(["ip", "link", "set", "lo", "multicast", "on"], check=True)
    time.sleep(0.1)
    if not _loopback_multicast_works():
        pytest.fail("multicast does not work on the loopback interface even with the multicast flag and route")
    try:
        yield
    finally:
        subprocess.run(["ip", "link", "set", "lo", "multicast", "off"], check=False)
        if added:
            subprocess.run(["ip", "route", "del", "224.0.0.0/4", "dev", "lo"], check=False)
