"""Device client: pull, verify, assemble and merge models; the on-demand loader; the RAG client."""

__all__: tuple[str, ...] = ()
