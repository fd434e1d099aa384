"""The device's multicast side: joining a session, receiving pieces, repairing losses."""

from clients.multicast.session import MulticastOptions, MulticastStats

__all__ = ("MulticastOptions", "MulticastStats")
