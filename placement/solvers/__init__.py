"""Placement solvers: TrimCaching (special and general case), Independent Caching, the exact optimum."""

__all__: tuple[str, ...] = ()
