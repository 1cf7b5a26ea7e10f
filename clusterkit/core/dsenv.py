"""Read, lint, merge and write ``.deepspeed_env`` with DeepSpeed's exact semantics.

DeepSpeed's runner (``deepspeed/launcher/runner.py``) reads ``~/.deepspeed_env`` and then
``./.deepspeed_env`` on multi-node launches, and does nothing but this for every line::

    key, val = var.split('=', maxsplit=1)      # a line without '=' -> ValueError, launch dies
    runner.add_export(key, val)

``add_export`` strips both parts and, since 0.15.2, wraps the value in double quotes when it holds
anything outside ``[\\w@%+=:,./-]``; older releases export it bare. The pdsh launcher then puts
``export KEY=VALUE; `` in front of the command every node runs through its login shell, after pdsh
has replaced ``%h``, ``%n``, ``%u`` and ``%%`` in it. So there is no comment, blank-line or quote
handling: ``# K=v`` becomes ``export # K=v;``, which comments out the whole remote command.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

#: What DeepSpeed's ``add_export`` leaves unquoted; anything else makes it add double quotes.
_DS_SAFE_VALUE = re.compile(r"[^\w@%+=:,./-]")
_SHELL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Characters that change how a shell reads an unquoted word.
_UNQUOTED_BREAKERS = re.compile(r"[\s;&|<>()`*?\[\]\"'\\#~]")
#: pdsh rewrites these in the remote command before any shell sees it.
_PDSH_SUBSTITUTIONS = re.compile(r"%[hnu%]")
_PATH_KEEPERS = ("$PATH", "${PATH}", "/usr/bin", "/bin", "/usr/local/bin")
#: The file name DeepSpeed looks for (``$DS_ENV_FILE`` overrides it) in ``~`` and then the cwd.
DEEPSPEED_ENV_NAME = ".deepspeed_env"

#: ``problem(line, code, message, fix, breaks_launch)``
_Sink = Callable[[int, str, str, str, bool], None]


@dataclass(frozen=True)
class DsEnvEntry:
    """One ``KEY=value`` DeepSpeed will export; ``value`` is what it exports (stripped).

    ``line`` is the 1-based line in the file it came from, 0 for an entry not read from a file.
    """

    key: str
    value: str
    line: int = 0


@dataclass(frozen=True)
class DsEnvProblem:
    """One thing wrong with a line. ``breaks_launch``: DeepSpeed crashes, or a node runs the wrong thing."""

    path: str
    line: int
    code: str
    message: str
    fix: str
    breaks_launch: bool

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _strip_newline(raw: str) -> str:
    return raw[:-1] if raw.endswith("\n") else raw


def parse_deepspeed_env(lines: Sequence[str], path: str, *, quotes_values: bool = True
                        ) -> tuple[list[DsEnvEntry], list[DsEnvProblem]]:
    """Entries DeepSpeed would export from ``lines``, and every problem, each with its line number.

    ``lines`` may keep or drop their ``\\n``. ``quotes_values`` is False for DeepSpeed < 0.15.2,
    which exported values without quotes. Never raises.
    """
    entries: list[DsEnvEntry] = []
    problems: list[DsEnvProblem] = []

    def problem(line: int, code: str, message: str, fix: str, breaks: bool) -> None:
        problems.append(DsEnvProblem(path, line, code, message, fix, breaks))

    for number, raw in enumerate(lines, start=1):
        text = _strip_newline(raw)
        if "\n" in text:  # lines are normally split already; be safe with odd input
            text = text.replace("\n", " ")
        if not text.strip():
            problem(number, "blank-line",
                    "blank line: DeepSpeed's runner crashes on it with 'ValueError: not enough values "
                    "to unpack (expected 2, got 1)'", f"delete line {number}", True)
            continue
        if "=" not in text:
            if text.lstrip().startswith("#"):
                problem(number, "comment-line",
                        "comment line: DeepSpeed does not skip comments; its runner crashes with "
                        "'ValueError: not enough values to unpack (expected 2, got 1)'",
                        f"delete line {number}", True)
            else:
                problem(number, "missing-equals",
                        f"{text.strip()!r} has no '=': DeepSpeed's runner crashes with 'ValueError: "
                        "not enough values to unpack (expected 2, got 1)'",
                        f"write it as KEY=value or delete line {number}", True)
            continue
        key_part, value_part = text.split("=", 1)
        key, value = key_part.strip(), value_part.strip()
        if key.startswith("#"):
            problem(number, "commented-entry",
                    f"commented-out entry {text.strip()!r}: DeepSpeed exports it as 'export {key}=...;', "
                    "which comments out the rest of the remote command, so every node starts nothing "
                    "and exits 0", f"delete line {number} (comments are not allowed in this file)", True)
            continue
        if not key:
            problem(number, "empty-key",
                    f"no variable name before '=' ({text.strip()!r}): the remote shell fails with "
                    "'export: not a valid identifier'", f"put the variable name before '=' on line {number}",
                    True)
            continue
        if not _SHELL_IDENTIFIER.fullmatch(key):
            problem(number, "invalid-key",
                    f"{key!r} is not a shell variable name (letters, digits, '_', not starting with a "
                    f"digit): the remote shell rejects 'export {key}=...'",
                    f"rename the variable on line {number}", True)
            continue
        _check_spacing(text, key_part, value_part, number, problem)
        _check_value(key, value, number, quotes_values, problem)
        entries.append(DsEnvEntry(key, value, number))

    _check_duplicates(entries, path, problems)
    problems.sort(key=lambda p: p.line)
    return entries, problems


def _check_spacing(text: str, key_part: str, value_part: str, number: int,
                   problem: _Sink) -> None:
    if text.endswith("\r"):
        problem(number, "carriage-return",
                "Windows line ending (CR): DeepSpeed strips it, but shells that source this file keep it "
                "in the value", "convert the file: sed -i 's/\\r$//' FILE", False)
    unstripped = value_part.rstrip("\r")
    if key_part != key_part.strip() or unstripped != unstripped.strip():
        problem(number, "whitespace",
                "spaces around the name or value: DeepSpeed strips them, so the value it exports "
                "differs from what the line shows", f"remove the spaces around '=' and at the end of line "
                f"{number}", False)


def _check_value(key: str, value: str, number: int, quotes_values: bool, problem: _Sink) -> None:
    surrounded = len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'"
    inner = value[1:-1] if surrounded else value
    bare = f"{key}={inner}"
    if quotes_values:
        if surrounded and value[0] == "'":
            problem(number, "quoted-value",
                    f"{key}'s value is in single quotes: DeepSpeed adds double quotes around it, so the "
                    f"quotes become part of the value ({key}=\"{value}\")",
                    f"remove the quotes: {bare}", True)
        elif surrounded:
            cut = _UNQUOTED_BREAKERS.search(inner) is not None
            problem(number, "quoted-value",
                    f"{key}'s value is already in double quotes: DeepSpeed adds its own, giving "
                    f"{key}=\"\"{inner}\"\"" + (", which the shell cuts at the first space or special "
                                                  "character" if cut else
                                                  "; it only works because the value has no spaces"),
                    f"remove the quotes: {bare}", cut)
        elif '"' in value:
            problem(number, "double-quote-in-value",
                    f"{key}'s value contains a double quote: DeepSpeed wraps the value in double quotes, "
                    "so the shell ends the value early and reads the rest as commands",
                    f"remove the double quote from line {number}", True)
        elif _ends_with_odd_backslashes(value):
            problem(number, "trailing-backslash",
                    f"{key}'s value ends with a backslash, which escapes DeepSpeed's closing quote",
                    f"remove the trailing backslash on line {number}", True)
    elif not surrounded and _UNQUOTED_BREAKERS.search(value):
        problem(number, "unquoted-special",
                f"{key}'s value has spaces or shell characters and this DeepSpeed (< 0.15.2) exports it "
                f"without quotes ('export {key}={value};'): the shell splits it or reads it as syntax",
                "upgrade DeepSpeed (>= 0.15.2 quotes values), or remove the spaces and special characters",
                True)
    if "`" in value or "$(" in value:
        problem(number, "command-substitution",
                f"{key}'s value runs a command ('$(...)' or backticks) on every node at launch",
                f"write the literal value on line {number}", False)
    if _PDSH_SUBSTITUTIONS.search(value):
        problem(number, "pdsh-substitution",
                f"{key}'s value contains %h, %n, %u or %%: pdsh replaces them (host, node rank, user, %) "
                "in the remote command before the shell sees them",
                f"avoid '%' sequences on line {number}, or rely on them knowingly", False)
    if key == "PATH" and not any(part in _PATH_KEEPERS for part in value.split(":")):
        problem(number, "path-replaced",
                "PATH replaces the remote PATH entirely (no $PATH, /usr/bin or /bin): gcc, ninja and "
                "other tools may not be found on the nodes", f"append the old PATH: PATH={value}:$PATH",
                False)
    relative = relative_path_entries(value) if key == "PATH" else []
    if relative:
        shown = ", ".join(repr(entry) for entry in relative)
        problem(number, "path-relative",
                f"PATH entry {shown} is not an absolute path: each rank's shell looks it up from the directory it "
                "runs in (the launch directory), so the tools it should provide (the env's ninja) are not found "
                "there", f"write the absolute path on line {number} (`clusterkit bootstrap --python /abs/env/bin/"
                "python` rewrites the env's entry)", False)


def relative_path_entries(value: str) -> list[str]:
    """The entries of a PATH value that are not absolute ('' is the current directory to a shell);
    ``$VAR`` entries are expanded by the remote shell and count as absolute."""
    return [entry for entry in value.split(":") if not entry.startswith(("/", "$"))]


def _ends_with_odd_backslashes(value: str) -> bool:
    trailing = len(value) - len(value.rstrip("\\"))
    return trailing % 2 == 1


def _check_duplicates(entries: Iterable[DsEnvEntry], path: str, problems: list[DsEnvProblem]) -> None:
    first_line: dict[str, int] = {}
    for entry in entries:
        if entry.key in first_line:
            problems.append(DsEnvProblem(
                path, entry.line, "duplicate-key",
                f"{entry.key} is also set on line {first_line[entry.key]}; DeepSpeed keeps the last value "
                f"(line {entry.line})", f"keep one {entry.key}= line", False))
        else:
            first_line[entry.key] = entry.line


def effective_values(entries: Iterable[DsEnvEntry]) -> dict[str, str]:
    """What DeepSpeed exports from these entries: last value per key, in first-seen order."""
    values: dict[str, str] = {}
    for entry in entries:
        values[entry.key] = entry.value
    return values


def pdsh_export_prefix(entries: Iterable[DsEnvEntry], *, quotes_values: bool = True) -> str:
    """The ``export K=v; `` text DeepSpeed's pdsh runner puts before the command each node runs."""
    parts = []
    for key, value in effective_values(entries).items():
        if quotes_values and _DS_SAFE_VALUE.search(value):
            value = f'"{value}"'
        parts.append(f"export {key}={value}; ")
    return "".join(parts)


def render_deepspeed_env(entries: Iterable[DsEnvEntry]) -> str:
    """File text DeepSpeed reads back as exactly these entries: ``KEY=value`` lines, nothing else.

    Raises ``ValueError`` for an entry DeepSpeed would mangle (bad name, quotes, line breaks,
    surrounding spaces), so a broken file is never written.
    """
    lines = []
    for entry in entries:
        if not _SHELL_IDENTIFIER.fullmatch(entry.key):
            raise ValueError(f"{entry.key!r} is not a shell variable name")
        if "\n" in entry.value or "\r" in entry.value:
            raise ValueError(f"{entry.key}'s value contains a line break")
        if '"' in entry.value:
            raise ValueError(f"{entry.key}'s value contains a double quote, which DeepSpeed cannot export")
        if entry.value != entry.value.strip():
            raise ValueError(f"{entry.key}'s value starts or ends with whitespace, which DeepSpeed strips")
        if _ends_with_odd_backslashes(entry.value):
            raise ValueError(f"{entry.key}'s value ends with a backslash")
        lines.append(f"{entry.key}={entry.value}\n")
    return "".join(lines)


def merge_deepspeed_env(existing: Iterable[DsEnvEntry], updates: Mapping[str, str]
                        ) -> tuple[list[DsEnvEntry], list[str]]:
    """Existing entries with ``updates`` applied: overridden in place, new keys appended in order.

    Duplicate existing keys collapse into one (DeepSpeed's own last-wins, first-position result).
    Returns the entries (numbered as lines of the new file) and the keys whose value changed or
    were added; an empty list means writing the file would change nothing DeepSpeed exports.
    """
    values = effective_values(existing)
    changed: list[str] = []
    for key, value in updates.items():
        if values.get(key) != value:
            values[key] = value
            changed.append(key)
    merged = [DsEnvEntry(key, value, number) for number, (key, value) in enumerate(values.items(), start=1)]
    return merged, changed


def renderable(value: str) -> bool:
    """Whether :func:`render_deepspeed_env` can write this value so DeepSpeed reads it back intact."""
    return not ('"' in value or "\n" in value or "\r" in value or value != value.strip()
                or _ends_with_odd_backslashes(value))


def _unquoted(value: str) -> str | None:
    """The value inside matching surrounding quotes, where it can be written without them."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" and renderable(value[1:-1]):
        return value[1:-1]
    return None


def repair_deepspeed_env(lines: Sequence[str], path: str) -> tuple[list[DsEnvEntry], list[str]]:
    """The entries to keep when rewriting a file, and what was mended, each with its line.

    One judgement with the doctor's lint: a line it says breaks a launch is mended where its fix is
    mechanical (quotes around a value removed: DeepSpeed adds its own) and otherwise left out (it
    stays in the backup). Lines DeepSpeed reads as written are kept as they are.
    """
    entries, problems = parse_deepspeed_env(lines, path)
    by_line: dict[int, list[DsEnvProblem]] = {}
    for problem in problems:
        by_line.setdefault(problem.line, []).append(problem)
    kept: list[DsEnvEntry] = []
    notes: list[str] = []
    for entry in entries:
        breaking = [p for p in by_line.get(entry.line, []) if p.breaks_launch]
        if renderable(entry.value) and not breaking:
            kept.append(entry)
            continue
        why = next(iter(breaking), None) or next((p for p in by_line.get(entry.line, []) if p.code != "whitespace"),
                                                 None)
        reason = why.message if why else f"{entry.key}'s value cannot be exported as written"
        inner = _unquoted(entry.value)
        if inner is not None:
            kept.append(DsEnvEntry(entry.key, inner, entry.line))
            notes.append(f"{path}:{entry.line}: removed the quotes around {entry.key}'s value ({reason})")
        else:
            notes.append(f"{path}:{entry.line}: left out {entry.key} ({reason}); it stays in the backup")
    entry_lines = {e.line for e in entries}
    for line, found in sorted(by_line.items()):
        breaking = [p for p in found if p.breaks_launch]
        if line not in entry_lines and breaking:
            notes.append(f"{path}:{line}: left out ({breaking[0].message}); it stays in the backup")
    return kept, notes


def _names_same_dir(relative: str, absolute: str) -> bool:
    """Whether a relative PATH entry is ``absolute`` spelt from some directory above it
    (``envs/small/bin`` for ``/home/me/envs/small/bin``): how a relative ``--python`` was once written."""
    tail = posixpath.normpath(relative)
    return tail not in (".", "..") and not tail.startswith("../") and \
        posixpath.normpath(absolute).endswith("/" + tail)


def merge_path(existing: str | None, first: str, launch_path: Sequence[str]) -> tuple[str, list[str]]:
    """PATH with ``first`` (the env's bin, absolute) at the front, the user's own entries kept in their
    order, then the launching shell's absolute entries not yet there; and what that changed, in words.

    A relative entry naming ``first`` (written from an earlier relative ``--python``) is replaced by it.
    """
    if not first.startswith("/"):
        raise ValueError(f"the env's bin directory must be an absolute path, not {first!r}")
    mine = [p for p in (existing or "").split(":") if p]
    mended = [p for p in mine if not p.startswith(("/", "$")) and _names_same_dir(p, first)]
    kept_mine = [p for p in mine if p not in mended]
    merged = list(dict.fromkeys([first, *kept_mine, *(p for p in launch_path if p.startswith("/"))]))
    if existing is not None and merged == mine:
        return existing, []
    if existing is None:
        return ":".join(merged), [f"PATH set: {first} first, then this shell's PATH"]
    words = [f"{first} put first" if first in mine else f"{first} added first"]
    if mended:
        words.append(f"replaced the relative {', '.join(mended)} by it")
    kept = [p for p in kept_mine if p != first]
    if kept:
        words.append(f"kept {', '.join(kept)}")
    added = [p for p in merged if p not in mine and p != first]
    if added:
        words.append(f"added {', '.join(added)} from this shell")
    return ":".join(merged), ["PATH: " + "; ".join(words)]


@dataclass(frozen=True)
class DsEnvUpdate:
    """What a ``.deepspeed_env`` should become: its text, and each change in words (empty: none)."""

    text: str
    changes: list[str]
    entries: int


def update_deepspeed_env(current: str | None, updates: Mapping[str, str], path: str,
                         env_bin: str) -> DsEnvUpdate:
    """The file ``current`` with ``updates`` applied, broken lines mended or left out, and PATH merged
    (``env_bin`` first, the user's entries kept, ``updates["PATH"]``'s entries after them)."""
    entries, notes = repair_deepspeed_env((current or "").splitlines(), path)
    values = dict(updates)
    existing = effective_values(entries)
    changes: list[str] = []
    if "PATH" in values:
        values["PATH"], said = merge_path(existing.get("PATH"), env_bin, values["PATH"].split(":"))
        changes += said
    merged, changed = merge_deepspeed_env(entries, values)
    changes += [f"set {key}={values[key]}" for key in changed if key != "PATH"]
    text = render_deepspeed_env(merged)
    if text != (current or "") and not changes and not notes and current is not None:
        changes.append("rewrote the file in DeepSpeed's plain KEY=value form")
    return DsEnvUpdate(text, notes + changes, len(merged))


def deepspeed_env_values(cwd: str, home: str | None = None) -> dict[str, str]:
    """What DeepSpeed's runner exports from ``~/.deepspeed_env`` then ``./.deepspeed_env`` (cwd wins)."""
    from pathlib import Path

    values: dict[str, str] = {}
    for folder in (Path(home) if home else Path.home(), Path(cwd)):
        path = folder / DEEPSPEED_ENV_NAME
        if path.is_file():
            entries, _ = parse_deepspeed_env(path.read_text(encoding="utf-8", errors="replace").splitlines(),
                                             str(path))
            values.update(effective_values(entries))
    return values
