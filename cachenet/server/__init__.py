"""The HTTP server kit the origin and the edge share: device API, file sending, middlewares, OpenAPI, metrics."""

__all__: tuple[str, ...] = ()
