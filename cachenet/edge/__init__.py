"""The edge node: a capacity-bounded block cache in front of peers and the origin."""

__all__: tuple[str, ...] = ()
