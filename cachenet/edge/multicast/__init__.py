"""The edge node's multicast side: the hub that batches joins into sessions, its routes, the paced sender."""

__all__: tuple[str, ...] = ()
