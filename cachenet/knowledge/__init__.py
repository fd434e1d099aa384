"""Knowledge collections shared by every side: shard and index formats, queries, IVF search, the embedder."""

__all__: tuple[str, ...] = ()
