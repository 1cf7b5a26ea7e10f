"""Placeholder until the pyenv collector lands."""

from __future__ import annotations


def collect_python_env(options: object) -> object:
    raise NotImplementedError("pyenv collector not written yet")
