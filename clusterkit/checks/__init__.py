"""Checks: judges over facts. Importing a check module registers its checks."""

from __future__ import annotations

from clusterkit.checks.registry import CATALOGUE, CheckSpec


def load_checks() -> dict[str, CheckSpec]:
    """Import every check module (registration happens on import) and return id -> check.

    A module that fails to import is an error: a smaller catalogue would pass what it no longer checks.
    """
    return CATALOGUE.load()
