"""Command-line options every server command shares, without importing the server itself."""

import argparse
from pathlib import Path

__all__ = ("add_tls_arguments",)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """`--tls-cert` and `--tls-key`: serve HTTPS instead of HTTP."""
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate (chain): serve HTTPS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
