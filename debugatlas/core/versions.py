"""The installed versions of packages, looked up in one place."""
from __future__ import annotations

from typing import Sequence


def package_versions(packages: Sequence[str], missing: str | None = None) -> dict[str, str]:
    """package -> installed version, in the order given; a package that is not installed is left
    out, or given the text `missing` when that is set."""
    import importlib.metadata as md

    out = {}
    for package in packages:
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            if missing is not None:
                out[package] = missing
    return out
