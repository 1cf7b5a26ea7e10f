"""Load and validate a bootstrap playbook (``playbooks/bootstrap.yaml``): the ordered step list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from clusterkit.errors import InputError

DEFAULT_STEP_TIMEOUT_S = 60.0
_STEP_KEYS = {"id", "description", "when", "timeout"}
_WHEN = {"sync"}


@dataclass(frozen=True)
class StepSpec:
    """One playbook entry: which step, when it runs, how long a node may take, where it is written."""

    id: str
    description: str
    when: str | None
    timeout_s: float
    line: int


def default_playbook_text() -> str:
    return resources.files("clusterkit.playbooks").joinpath("bootstrap.yaml").read_text(encoding="utf-8")


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that records the line of every mapping (``__line__``) for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping  # type: ignore[return-value]


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_playbook(text: str, path: str, known_steps: Mapping[str, Sequence[str]]) -> list[StepSpec]:
    """Validate the playbook; every error names ``path:line``.

    ``known_steps``: step id -> the steps it needs listed before it (authorize-all after node-keys:
    run first, it would authorize keys that do not exist yet).
    """
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"not valid YAML: {getattr(exc, 'problem', exc)}", path,
                         mark.line + 1 if mark else None) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise InputError("expected a mapping with a 'steps' list", path, 1)
    specs: list[StepSpec] = []
    seen: set[str] = set()
    for item in doc["steps"]:
        if not isinstance(item, dict):
            raise InputError("each step must be a mapping with an 'id'", path)
        line = int(item.pop("__line__", 0)) or None
        unknown = set(item) - _STEP_KEYS
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(sorted(unknown))} (allowed: "
                             f"{', '.join(sorted(_STEP_KEYS))})", path, line)
        step_id = item.get("id")
        if not isinstance(step_id, str) or step_id not in known_steps:
            raise InputError(f"unknown step {step_id!r} (known: {', '.join(sorted(known_steps))})", path, line)
        if step_id in seen:
            raise InputError(f"step {step_id!r} listed twice", path, line)
        seen.add(step_id)
        when = item.get("when")
        if when is not None and when not in _WHEN:
            raise InputError(f"when: {when!r} is not one of {', '.join(sorted(_WHEN))}", path, line)
        timeout = item.get("timeout", DEFAULT_STEP_TIMEOUT_S)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}", path, line)
        missing = [need for need in known_steps[step_id] if need not in seen - {step_id}]
        if missing:
            raise InputError(f"step {step_id!r} needs {', '.join(repr(m) for m in missing)} before it (it uses "
                             "what they set up); list them earlier", path, line)
        specs.append(StepSpec(step_id, str(item.get("description", "")).strip(), when, float(timeout),
                              line or 0))
    return specs


def load_playbook(path: str | None, known_steps: Mapping[str, Sequence[str]]) -> list[StepSpec]:
    """The given playbook file, or the built-in ``playbooks/bootstrap.yaml``."""
    if path is None:
        return parse_playbook(default_playbook_text(), "playbooks/bootstrap.yaml", known_steps)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read playbook: {exc.strerror}", path) from None
    return parse_playbook(text, path, known_steps)
