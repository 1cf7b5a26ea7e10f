"""Placeholder until the gpu collector lands."""

from __future__ import annotations


def collect_nvidia(options: object) -> object:
    raise NotImplementedError("gpu collector not written yet")
