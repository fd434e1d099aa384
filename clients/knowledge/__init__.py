"""The device's knowledge side: top-k queries to an edge node or the origin."""

__all__: tuple[str, ...] = ()
