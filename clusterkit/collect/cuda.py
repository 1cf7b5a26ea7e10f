"""Placeholder until the cuda collector lands."""

from __future__ import annotations


def collect_cuda(options: object) -> object:
    raise NotImplementedError("cuda collector not written yet")
