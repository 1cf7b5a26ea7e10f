"""Placeholder until the network collector lands."""

from __future__ import annotations


def collect_network(options: object) -> object:
    raise NotImplementedError("network collector not written yet")
