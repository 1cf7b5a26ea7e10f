"""Checks: judges over facts. Importing this package registers every built-in check."""

from __future__ import annotations

import importlib

from clusterkit.checks.registry import REGISTRY, CheckSpec

CHECK_MODULES = ("collection", "gpu", "system", "software", "network", "launcher", "cluster")


def load_checks() -> dict[str, CheckSpec]:
    """Import every check module (registration happens on import) and return the registry."""
    for name in CHECK_MODULES:
        try:
            importlib.import_module(f"clusterkit.checks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"clusterkit.checks.{name}":
                raise
    return REGISTRY
