"""Read a DeepSpeed config JSON file, keeping the line and column of every key.

What the loaders accept differs: DeepSpeed's own ``DeepSpeedConfig(path)`` reads the file with
``hjson.load(..., object_pairs_hook=dict_raise_error_on_duplicate_keys)`` (comments, trailing commas
and unquoted strings pass; duplicate keys fail), while the HF Trainer and Accelerate read it with plain
``json.load`` (strict JSON; a duplicate key silently keeps the last value). clusterkit takes the
intersection: strict JSON without duplicate keys, so the file works with every loader. An error names
``path:line:column`` and, where DeepSpeed alone would have read the file, says so.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.core.findings import KeyPath
from clusterkit.errors import InputError

#: json's own string scanner (C-accelerated), which typeshed does not declare.
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class DsConfig:
    """A parsed DeepSpeed config: the data, and where each key path was written in the file."""

    path: str
    data: dict[str, Any]
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def get(self, *keys: str, default: Any = None) -> Any:
        """The value at a key path (``cfg.get("zero_optimization", "stage")``), or ``default``."""
        node: Any = self.data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def where(self, keys: KeyPath = ()) -> str:
        """``path:line:col`` of the deepest key of ``keys`` that is in the file (the file alone if none)."""
        for depth in range(len(keys), 0, -1):
            pos = self.positions.get(keys[:depth])
            if pos is not None:
                return f"{self.path}:{pos[0]}:{pos[1]}"
        return self.path


def dotted(keys: KeyPath) -> str:
    """``("zero_optimization", "stage")`` -> ``zero_optimization.stage``."""
    return ".".join(keys)


def iter_leaves(node: Any, prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every non-object value in a config with its key path (lists count as leaves)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from iter_leaves(value, (*prefix, key))
    else:
        yield prefix, node


def load_ds_config(path: str | Path) -> DsConfig:
    """Read and parse a DeepSpeed config file; :class:`InputError` names ``path:line:col`` on bad input."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("DeepSpeed config not found", str(p)) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start}); a DeepSpeed config is a JSON file",
                         str(p)) from None
    except OSError as exc:
        raise InputError(f"cannot read DeepSpeed config: {exc.strerror or exc}", str(p)) from None
    return parse_ds_config(text, str(p))


def parse_ds_config(text: str, path: str = "<config>") -> DsConfig:
    """Parse config text as strict JSON with an object at the top and no duplicate keys."""
    if text.startswith("\ufeff"):
        text = text[1:]  # json.load on a utf-8 file would fail on the BOM; Python's open() keeps it
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        message, pos = _explain(text, exc)
        line, column = _line_col(text, pos)
        raise InputError(message + _hjson_note(text), path, line, column) from None
    except RecursionError:
        raise InputError("nested too deeply to be a DeepSpeed config", path) from None
    if not isinstance(data, dict):
        raise InputError(f"the top level must be a JSON object {{...}}, not {_json_type(data)}", path, 1, 1)
    positions: dict[KeyPath, tuple[int, int]] = {}
    try:
        _Positions(text, path, positions).value(_skip_ws(text, 0), ())
    except RecursionError:
        raise InputError("nested too deeply to be a DeepSpeed config", path) from None
    return DsConfig(path, data, positions)


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return "a number"


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _previous_token(text: str, pos: int) -> int:
    """Index of the last non-whitespace character before ``pos`` (-1 if none)."""
    pos -= 1
    while pos >= 0 and text[pos] in _WHITESPACE:
        pos -= 1
    return pos


def _explain(text: str, exc: json.JSONDecodeError) -> tuple[str, int]:
    """A message naming the classic mistake at ``exc.pos``, and the position to point at."""
    pos = exc.pos
    here = text[pos] if pos < len(text) else ""
    before = _previous_token(text, pos)
    prev = text[before] if before >= 0 else ""
    if not text.strip():
        return "empty file; a DeepSpeed config is a JSON object {...}", 0
    if here in "}]" and here and prev == ",":
        kind = "object" if here == "}" else "array"
        return f"trailing comma after the last {'member' if kind == 'object' else 'item'} of an {kind} " \
               f"(JSON forbids it: remove the ',')", before
    if text.startswith("//", pos) or text.startswith("/*", pos) or here == "#":
        return "comment; JSON has no comments (move the note to a key like \"_comment\" or delete it)", pos
    if here == "'":
        return "single-quoted string; JSON strings and keys need double quotes", pos
    if not here and not exc.msg.startswith("Unterminated string"):
        return f"file ends early ({exc.msg.lower()}); a '}}' or ']' is probably missing", pos
    if exc.msg.startswith("Expecting ',' delimiter"):
        return "missing ',' between two members or items", before + 1
    if exc.msg.startswith("Extra data"):
        return "unexpected text after the end of the top-level object", pos
    word = re.match(r"[A-Za-z_][A-Za-z0-9_.\-]*", text[pos:])
    if word:
        token = word.group()
        if exc.msg.startswith("Expecting property name"):
            return f"unquoted key {token!r}; JSON keys need double quotes", pos
        hint = {"True": "true", "False": "false", "None": "null"}.get(token)
        if hint:
            return f"{token} is Python, not JSON: write {hint}", pos
        return f"unquoted value {token!r}; write \"{token}\" if it is a string", pos
    if exc.msg.startswith("Unterminated string"):
        return "string is never closed (missing '\"')", pos
    if exc.msg.startswith("Invalid control character"):
        return "raw line break or tab inside a string; write \\n or \\t", pos
    return f"invalid JSON: {exc.msg}", pos


def _hjson_note(text: str) -> str:
    """Say so when DeepSpeed's own (hjson) loader would have read the file anyway."""
    try:
        import hjson  # type: ignore[import-untyped]
    except ImportError:
        return ""
    try:
        hjson.loads(text)
    except Exception:
        return ""
    return (" (DeepSpeed alone reads configs with hjson and would accept this, but the HF Trainer and "
            "Accelerate use json.load and fail; keep the file strict JSON)")


class _Positions:
    """Walk JSON text that ``json.loads`` accepted, noting where each key is; reject duplicate keys."""

    def __init__(self, text: str, path: str, out: dict[KeyPath, tuple[int, int]]) -> None:
        self.text = text
        self.path = path
        self.out = out

    def value(self, pos: int, keys: KeyPath) -> int:
        text = self.text
        char = text[pos]
        if char == "{":
            return self.obj(pos + 1, keys)
        if char == "[":
            return self.array(pos + 1, keys)
        if char == '"':
            return scanstring(text, pos + 1)[1]
        for literal in _LITERALS:
            if text.startswith(literal, pos):
                return pos + len(literal)
        match = _NUMBER.match(text, pos)
        if match is None:  # json.loads accepted this text, so this cannot happen
            raise InputError("internal: unexpected character while locating keys", self.path,
                             *_line_col(text, pos))
        return match.end()

    def obj(self, pos: int, keys: KeyPath) -> int:
        text = self.text
        seen: dict[str, int] = {}
        pos = _skip_ws(text, pos)
        if text[pos] == "}":
            return pos + 1
        while True:
            key_start = pos
            key, pos = scanstring(text, pos + 1)
            line, column = _line_col(text, key_start)
            if key in seen:
                where = dotted((*keys, key))
                raise InputError(f"duplicate key {where!r} (first on line {seen[key]}); DeepSpeed refuses "
                                 "the file ('Duplicate keys in DeepSpeed config') and json.load keeps only "
                                 "the last value", self.path, line, column)
            seen[key] = line
            self.out[(*keys, key)] = (line, column)
            pos = _skip_ws(text, pos)
            pos = _skip_ws(text, pos + 1)  # the ':'
            pos = _skip_ws(text, self.value(pos, (*keys, key)))
            if text[pos] == "}":
                return pos + 1
            pos = _skip_ws(text, pos + 1)  # the ','

    def array(self, pos: int, keys: KeyPath) -> int:
        text = self.text
        pos = _skip_ws(text, pos)
        if text[pos] == "]":
            return pos + 1
        index = 0
        while True:
            pos = _skip_ws(text, self.value(pos, (*keys, str(index))))
            if text[pos] == "]":
                return pos + 1
            pos = _skip_ws(text, pos + 1)
            index += 1


def read_json_file(path: str | Path, what: str) -> Any:
    """A JSON file's value; every way it can fail is an :class:`InputError` naming the file (and the
    line and column of a syntax error). ``what`` names the file in the messages ("facts file")."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} not found", str(p)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc.msg}", str(p), exc.lineno, exc.colno) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what}: {exc}", str(p)) from None
