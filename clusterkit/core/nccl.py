"""NCCL's own rules, as plain functions the checks and the bootstrap share."""

from __future__ import annotations

from collections.abc import Iterable

#: What NCCL skips when NCCL_SOCKET_IFNAME is unset (it prefers ib*, then anything but these).
DEFAULT_EXCLUDED_PREFIXES = ("docker", "lo", "virbr")


def select_interfaces(spec: str, names: Iterable[str]) -> list[str]:
    """Interfaces NCCL_SOCKET_IFNAME=``spec`` selects among ``names``, with NCCL's syntax.

    A comma-separated list of prefixes; a leading ``^`` turns the whole list into exclusions; a
    leading ``=`` (after any ``^``) makes the items exact names instead of prefixes.
    """
    exclude = spec.startswith("^")
    body = spec[1:] if exclude else spec
    exact = body.startswith("=")
    body = body[1:] if exact else body
    items = [item.strip() for item in body.split(",") if item.strip()]

    def hit(name: str) -> bool:
        return any(name == item if exact else name.startswith(item) for item in items)

    return [name for name in names if hit(name) != exclude]
