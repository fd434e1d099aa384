"""The origin's knowledge side: ingesting documents into IVF-sharded collections, and their routes."""

__all__: tuple[str, ...] = ()
