"""Every module of the device client has a sorted, importable `__all__`."""

import importlib

import pytest

MODULES = (
    "assemble",
    "cli",
    "config",
    "fetch",
    "loader",
    "localstore",
    "merge",
    "puller",
    "sources",
    "tensorfile",
)


@pytest.mark.parametrize("name", MODULES)
def test_module_exports_a_sorted_importable_all(name: str) -> None:
    module = importlib.import_module(f"clients.{name}")
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for item in exported:
        assert hasattr(module, item), item
