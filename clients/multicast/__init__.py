"""The device's multicast side: joining a session, receiving pieces, repairing losses."""

__all__: tuple[str, ...] = ()
