"""Multicast delivery shared by edge nodes and devices: the datagram format, sockets, the planner."""

__all__: tuple[str, ...] = ()
