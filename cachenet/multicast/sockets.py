"""UDP sockets for IPv4 multicast: a sender bound to an interface, a receiver joined to a group."""

import ipaddress
import socket
import struct
from typing import Final

from cachenet.errors import BadInput

__all__ = ("group_address", "is_loopback", "open_receiver", "open_sender", "validate_group")

# Linux: deliver only the groups this socket joined (not every group any socket on the host joined).
_IP_MULTICAST_ALL: Final = 49
_SO_RCVBUFFORCE: Final = 33
RECEIVE_BUFFER_BYTES: Final = 16 * 1024 * 1024


def validate_group(address: str) -> str:
    """An IPv4 multicast address (224.0.0.0/4) as a string; raises `BadInput`."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise BadInput(f"{address!r} is not an IPv4 address") from None
    if not ip.is_multicast:
        raise BadInput(f"{address} is not a multicast address (224.0.0.0/4)")
    return str(ip)


def group_address(base: str, index: int) -> str:
    """The `index`-th group address counting up from `base`."""
    ip = ipaddress.IPv4Address(validate_group(base)) + index
    return validate_group(str(ip))


def is_loopback(interface: str | None) -> bool:
    """Whether an interface address is on the loopback network."""
    return interface is not None and ipaddress.IPv4Address(interface).is_loopback


def open_sender(*, interface: str | None, ttl: int) -> socket.socket:
    """A non-blocking UDP socket that sends multicast out of `interface` (None: the kernel's choice)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        if interface is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def open_receiver(group: str, port: int, *, interface: str | None, timeout_s: float = 0.2) -> socket.socket:
    """A blocking UDP socket (with a timeout) that joined `group` on `interface` and gets its datagrams only.

    Raises `OSError` when the group cannot be joined there (no multicast route, no such
    interface).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _grow_receive_buffer(sock)
        try:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        except OSError:
            pass  # not Linux: binding to the group address below filters as well
        # Bound to the group address, the socket sees that group's datagrams and no others.
        sock.bind((group, port))
        local = socket.inet_aton(interface or "0.0.0.0")
        sock.setsockopt(
            socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton(group), local)
        )
        sock.settimeout(timeout_s)
    except OSError:
        sock.close()
        raise
    return sock


def _grow_receive_buffer(sock: socket.socket) -> None:
    # A big buffer rides out bursts while the receiving thread waits for the GIL. Root may
    # exceed net.core.rmem_max (SO_RCVBUFFORCE); others get what the limit allows.
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
            return
        except OSError:
            continue
