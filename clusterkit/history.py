"""Saved runs on disk: ``~/.clusterkit/runs/`` (``$CLUSTERKIT_HOME/runs``), one JSON file per run.

A run file is named ``<id>__<label>.json`` (id: UTC time and a random suffix, ``20261204-181500-3fa2``;
label: ``doctor``, ``bench_collectives``...) and written atomically (a temporary file in the same
directory, then a rename). ``names.json`` maps a name (``good``) to one run per label, so ``good`` can
name a doctor run and a bench run at once. The directory is capped (:data:`DEFAULT_CAP_BYTES`): past it
the oldest unnamed runs go first; named runs are never dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterkit.core.saved_run import SavedRun, SavedRunError, run_from_json, run_to_json
from clusterkit.errors import UsageError

HOME_ENV = "CLUSTERKIT_HOME"
CAP_ENV = "CLUSTERKIT_HISTORY_MB"
#: The history's size cap: 256 MiB holds about a hundred doctor runs of 64 nodes (~2 MiB each), thousands
#: of a handful of nodes.
DEFAULT_CAP_BYTES = 256 << 20
#: The name ``--compare`` looks for first.
GOOD = "good"
_NAMES = "names.json"
_LOCK = ".lock"
#: A run id starts with its UTC date: a name that starts with a digit could read as one, and hide it.
_RUN_ID = re.compile(r"\d")


def clusterkit_home() -> Path:
    """The user's clusterkit directory: ``$CLUSTERKIT_HOME``, else ``~/.clusterkit`` (where the trusted host
    keys log lives too)."""
    return Path(os.environ.get(HOME_ENV) or "~/.clusterkit").expanduser()


def _cap_from_env() -> int:
    text = os.environ.get(CAP_ENV, "")
    try:
        return int(float(text) * (1 << 20)) if text else DEFAULT_CAP_BYTES
    except ValueError:
        raise UsageError(f"{CAP_ENV}={text!r}: expected a size in MiB") from None


@dataclass(frozen=True)
class Entry:
    """One saved run's file: its id, label and path, and the names it holds."""

    id: str
    label: str
    path: Path
    names: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """Its id and the names it holds: ``20261204-181500-3fa2 (good)``."""
        return f"{self.id} ({', '.join(self.names)})" if self.names else self.id

    @property
    def size(self) -> int:
        """Its size in bytes; 0 once another clusterkit has dropped it."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0


def _slug(label: str) -> str:
    return label.replace(" ", "_")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class History:
    """The saved runs under ``root`` (default: :func:`clusterkit_home`/runs)."""

    def __init__(self, root: Path | None = None, cap_bytes: int | None = None) -> None:
        self.root = root or clusterkit_home() / "runs"
        self.cap_bytes = cap_bytes if cap_bytes is not None else _cap_from_env()

    # ------------------------------------------------------------------------------------ reading

    def names(self) -> dict[str, dict[str, str]]:
        """``names.json``: each name's run id per label. A file that cannot be read or is not a names file
        is a usage error naming it: guessing it empty would let the next ``mark`` overwrite every name and
        the next trim drop the runs they held."""
        path = self.root / _NAMES
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} line {exc.lineno}: not JSON ({exc.msg}); it holds the runs' names "
                             "(good...): mend it or move it aside") from None
        if not isinstance(data, dict) or not all(
                isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
                for labels in data.values()):
            raise UsageError(f"{path}: not a names file (expected {{name: {{run kind: run id}}}}); "
                             "mend it or move it aside")
        return data

    def entries(self) -> list[Entry]:
        """Every saved run, oldest first."""
        if not self.root.is_dir():
            return []
        held: dict[str, list[str]] = {}
        for name, labels in self.names().items():
            for run_id in labels.values():
                held.setdefault(run_id, []).append(name)
        found = []
        for path in sorted(self.root.glob("*__*.json")):
            run_id, _, slug = path.stem.partition("__")
            found.append(Entry(run_id, slug.replace("_", " "), path, tuple(sorted(held.get(run_id, [])))))
        return found

    def find(self, ref: str, label: str | None = None) -> Entry:
        """A run by name (for ``label``: the run of that label holding it) or by id (or an id's unique start)."""
        entries = self.entries()
        by_id = {e.id: e for e in entries}
        labels = self.names().get(ref)
        if labels:
            chosen = labels.get(label) if label else (labels[next(iter(labels))] if len(labels) == 1 else None)
            if chosen in by_id:
                return by_id[chosen]
            if label and chosen:
                raise UsageError(f"{ref!r} named {label} run {chosen}, which is no longer saved (dropped or "
                                 "removed); clusterkit history list shows the runs")
            if label:
                raise UsageError(f"no {label} run is named {ref!r} (named: {', '.join(sorted(labels))}); "
                                 "clusterkit history list shows the runs")
            held = [(kind, run_id) for kind, run_id in sorted(labels.items()) if run_id in by_id]
            if len(held) == 1:
                return by_id[held[0][1]]
            if held:
                each = "; ".join(f"{kind} {run_id}" for kind, run_id in held)
                raise UsageError(f"{ref!r} names a run of each kind ({each}): give the run's id")
        matches = [e for e in entries if e.id.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        what = "several saved runs match" if matches else "no saved run matches"
        raise UsageError(f"{what} {ref!r}; clusterkit history list shows the runs and their names")

    def reference(self, ref: str | None, label: str) -> tuple[SavedRun, str]:
        """The run to compare a ``label`` run against, and how to name it: ``ref`` as a file path, a name or
        an id; without one, the ``label`` run named ``good``, else the last ``label`` run."""
        if ref and is_run_file(ref):
            return load(Path(ref)), ref
        if ref:
            entry = self.find(ref, label)
        else:
            good = self.names().get(GOOD, {}).get(label)
            candidates = [e for e in self.entries() if e.label == label]
            marked = [e for e in candidates if e.id == good]
            if not candidates:
                raise UsageError(f"no saved {label} run to compare against; run it once first (runs are saved "
                                 "unless --no-save-run), or name a saved run's file")
            if marked:
                entry = marked[-1]
            else:  # the last run that reads: a run file broken since is named, not a reason to stop
                skipped = []
                for entry in reversed(candidates):
                    try:
                        run = load(entry.path)
                    except UsageError as exc:
                        skipped.append(str(exc))
                        continue
                    note = f"; skipped {len(skipped)} newer unreadable: {skipped[0]}" if skipped else ""
                    return run, f"run {entry.title}{note}"
                raise UsageError(skipped[0])
        return load(entry.path), f"run {entry.title}"

    # ------------------------------------------------------------------------------------ writing

    def _made(self) -> Path:
        """The directory, made private: runs hold the nodes' facts and their ``.deepspeed_env`` values."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.root

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer of ``names.json`` and of the trim at a time (two runs ending at once)."""
        with open(self._made() / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def save(self, run: SavedRun, name: str | None = None) -> Entry:
        """Write ``run`` (atomically), name it if asked, then drop the oldest unnamed runs past the cap."""
        if name:
            self.check_name(name)  # before the run is written: a refused name leaves no unnamed run behind
        self._made()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(run.started_at))
        run_id = f"{stamp}-{secrets.token_hex(2)}"
        path = self.root / f"{run_id}__{_slug(run.label)}.json"
        _atomic_write(path, json.dumps(run_to_json(run), separators=(",", ":")) + "\n")
        entry = Entry(run_id, run.label, path)
        if name:
            entry = self.mark(name, run_id)
        self.trim(keep=run_id)
        return entry

    def check_name(self, name: str, entries: list[Entry] | None = None) -> None:
        """A usage error unless ``name`` is a plain word that reads as no run id (it would hide that run)."""
        if not name or "/" in name or name.endswith(".json"):
            raise UsageError(f"run name {name!r}: a plain word, e.g. good")
        if _RUN_ID.match(name) or any(e.id.startswith(name) for e in (self.entries() if entries is None else entries)):
            raise UsageError(f"run name {name!r} could read as a run id, which it would hide: a word that starts "
                             "with a letter, e.g. good")

    def mark(self, name: str, ref: str | None = None) -> Entry:
        """Give ``name`` to a run (default: the newest); the name leaves the run of the same label that had it."""
        entries = self.entries()
        self.check_name(name, entries)
        if not entries:
            raise UsageError("no saved run to name; run doctor or bench first")
        entry = self.find(ref) if ref else entries[-1]
        with self._locked():
            names = self.names()
            names.setdefault(name, {})[entry.label] = entry.id
            _atomic_write(self.root / _NAMES, json.dumps(names, indent=1, sort_keys=True) + "\n")
        return Entry(entry.id, entry.label, entry.path, tuple(sorted({*entry.names, name})))

    def trim(self, keep: str = "") -> list[Entry]:
        """Drop the oldest unnamed runs (never ``keep``) until the runs fit the cap; the dropped ones."""
        with self._locked():
            return self._trim(keep)

    def _trim(self, keep: str) -> list[Entry]:
        entries = self.entries()
        total = sum(e.size for e in entries)
        dropped = []
        for entry in entries:
            if total <= self.cap_bytes:
                break
            if entry.names or entry.id == keep:
                continue
            total -= entry.size
            entry.path.unlink(missing_ok=True)
            dropped.append(entry)
        return dropped


def is_run_file(ref: str) -> bool:
    """Whether a run reference names a file (a path, or ``*.json``) rather than a saved run."""
    return os.sep in ref or ref.endswith(".json")


def load(path: Path) -> SavedRun:
    """A saved run from its file; a usage error (one line) when it cannot be read or is not one."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read saved run {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    try:
        return run_from_json(data)
    except SavedRunError as exc:
        raise UsageError(f"{path}: {exc}") from None
