"""Placeholder until the launcher collector lands."""

from __future__ import annotations


def collect_launcher(options: object) -> object:
    raise NotImplementedError("launcher collector not written yet")
