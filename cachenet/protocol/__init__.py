"""The wire protocol every part speaks: header names, id and name patterns, message shapes.

Servers, nodes and devices import these definitions from here and nowhere else, so a header
name or an id pattern is written once.
"""

__all__: tuple[str, ...] = ()
