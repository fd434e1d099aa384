"""cachenet core: block ids, the block store, manifests, errors, HTTP helpers and the edge node."""

__all__: tuple[str, ...] = ()
__version__ = "0.1.0"
