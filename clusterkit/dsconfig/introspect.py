"""Ask the installed DeepSpeed what it makes of a config, instead of keeping a key list of our own.

:func:`judge_with_deepspeed` runs DeepSpeed's own parser (``DeepSpeedConfig._initialize_params``,
``_do_error_check``, ``_do_warning_check``) on the config with every dict wrapped in a recorder:

- the pydantic sections (``zero_optimization``, ``fp16``, ``bf16``...) forbid unknown keys, so their
  ``ValidationError`` lists every unknown or invalid key; we note them, drop them and parse again;
- plain-dict sections (and the top level) silently ignore keys DeepSpeed never reads: a key present in
  the file but never read during a complete parse is reported as ignored, except under a dict that
  DeepSpeed keeps as it is (``optimizer.params``), which other code reads later;
- what DeepSpeed logs as a warning (deprecated keys...) is collected too.

Batch arithmetic and the fp16/bf16 exclusivity are judged by clusterkit's own rules (which know the
world size), so they are neutralised in the copy DeepSpeed parses here.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import io
import logging
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from clusterkit.core.findings import KeyPath
from clusterkit.dsconfig.load import dotted
from clusterkit.node.facts import Maybe, Unavailable

#: Top-level keys DeepSpeed reads outside DeepSpeedConfig's parser (so a parse cannot see them):
#: runtime/config.py DeepSpeedConfig.__init__ (the distributed branch) and deepspeed/__init__.py.
KEYS_READ_ELSEWHERE = ("sequence_parallel_size", "data_parallel_size")

_MAX_PASSES = 30


@dataclass(frozen=True)
class ParseIssue:
    """One thing DeepSpeed's parser said about a key. ``kind``: see :class:`DeepSpeedVerdict`."""

    path: KeyPath
    kind: str
    message: str
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeepSpeedVerdict:
    """DeepSpeed's view of a config.

    ``issues`` kinds: ``unknown-key`` (refused: extra field), ``invalid-value`` (refused: bad value),
    ``rejected`` (refused by an assertion or exception), ``removed-key`` (a block DeepSpeed dropped),
    ``warning`` (DeepSpeed logged it), ``ignored-key`` (present but never read).
    ``complete`` is False when an exception stopped the parse: ignored keys are then not judged.
    """

    version: str
    issues: tuple[ParseIssue, ...]
    complete: bool
    top_level_keys: frozenset[str]


# ------------------------------------------------------------------------------------------ import


@functools.lru_cache(maxsize=1)
def deepspeed_config_module() -> Maybe[ModuleType]:
    """``deepspeed.runtime.config``, imported without its accelerator banner on our stdout."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            import deepspeed.runtime.config as ds_config
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return Unavailable(f"cannot import deepspeed: {type(exc).__name__}: {exc}")
    # DeepSpeed's logger bound its handler to sys.stdout at import, i.e. to our buffer: use stderr.
    for handler in logging.getLogger("DeepSpeed").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is buffer:
            handler.setStream(sys.stderr)
    return typing.cast(ModuleType, ds_config)


def deepspeed_version() -> Maybe[str]:
    module = deepspeed_config_module()
    if isinstance(module, Unavailable):
        return module
    return str(getattr(sys.modules.get("deepspeed"), "__version__", "unknown"))


def suggest(word: str, candidates: typing.Iterable[str]) -> tuple[str, ...]:
    """Close matches for a misspelt key, best first (case-insensitive)."""
    by_lower = {c.lower(): c for c in candidates}
    return tuple(by_lower[m] for m in difflib.get_close_matches(word.lower(), list(by_lower), n=2,
                                                                  cutoff=0.6))


# ----------------------------------------------------------------------------------------- tracing


class _Trace:
    """What a parse read: keys per dict path, dicts handed over whole, the last place touched."""

    def __init__(self) -> None:
        self.reads: dict[KeyPath, set[str]] = {}
        self.whole: set[KeyPath] = set()
        self.dicts: dict[KeyPath, _TracedDict] = {}
        self.last: KeyPath = ()

    def read(self, path: KeyPath, key: object) -> None:
        self.reads.setdefault(path, set()).add(str(key))
        self.last = (*path, str(key))

    def handed_over(self, path: KeyPath) -> None:
        self.whole.add(path)
        self.last = path


class _TracedDict(dict[str, Any]):
    """A dict that reports reads to a :class:`_Trace`; nested dicts come back traced too."""

    def __init__(self, data: dict[str, Any], path: KeyPath, trace: _Trace) -> None:
        super().__init__(data)
        self._path = path
        self._trace = trace
        self._children: dict[str, _TracedDict] = {}
        trace.dicts.setdefault(path, self)

    def _wrap(self, key: str, value: Any) -> Any:
        if isinstance(value, dict) and not isinstance(value, _TracedDict):
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = _TracedDict(value, (*self._path, str(key)), self._trace)
            return child
        return value

    def get(self, key: str, default: Any = None) -> Any:
        self._trace.read(self._path, key)
        return self._wrap(key, dict.__getitem__(self, key)) if dict.__contains__(self, key) else default

    def __getitem__(self, key: str) -> Any:
        self._trace.read(self._path, key)
        return self._wrap(key, dict.__getitem__(self, key))

    def __contains__(self, key: object) -> bool:
        self._trace.read(self._path, key)
        return dict.__contains__(self, key)

    def keys(self) -> Any:
        return _TracedKeys(self)

    def __iter__(self) -> Iterator[str]:
        self._trace.handed_over(self._path)
        return dict.__iter__(self)

    def items(self) -> Any:
        self._trace.handed_over(self._path)
        return [(k, self._wrap(k, v)) for k, v in dict.items(self)]

    def values(self) -> Any:
        self._trace.handed_over(self._path)
        return [self._wrap(k, v) for k, v in dict.items(self)]

    def pop(self, key: str, *default: Any) -> Any:
        self._trace.handed_over(self._path)
        return dict.pop(self, key, *default)

    def __copy__(self) -> _TracedDict:
        twin = _TracedDict(dict(dict.items(self)), self._path, self._trace)
        twin._children = self._children
        return twin


class _TracedKeys:
    """``d.keys()`` of a traced dict: ``k in d.keys()`` is a read, iterating hands the dict over."""

    def __init__(self, owner: _TracedDict) -> None:
        self._owner = owner

    def __contains__(self, key: object) -> bool:
        return key in self._owner

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return dict.__len__(self._owner)


def _reachable_ids(root: object, skip: set[int], depth: int = 6) -> set[int]:
    """ids of the containers reachable from ``root``'s attributes (what DeepSpeed kept)."""
    seen: set[int] = set()
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        obj, level = stack.pop()
        if id(obj) in seen or id(obj) in skip or level > depth:
            continue
        seen.add(id(obj))
        children: list[object] = []
        if isinstance(obj, dict):
            children = list(dict.values(obj))
        elif isinstance(obj, (list, tuple, set)):
            children = list(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, ModuleType)) and not callable(obj):
            children = list(vars(obj).values())
        stack.extend((child, level + 1) for child in children)
    return seen


# ------------------------------------------------------------------------------------- the parsing


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured_deepspeed_log() -> Iterator[_Capture]:
    logger = logging.getLogger("DeepSpeed")
    capture = _Capture()
    saved, saved_propagate = logger.handlers[:], logger.propagate
    logger.handlers[:] = [capture]
    logger.propagate = False
    try:
        yield capture
    finally:
        logger.handlers[:] = saved
        logger.propagate = saved_propagate


def _model_classes() -> dict[str, type]:
    """DeepSpeed's pydantic config models by class name (ValidationError titles name them)."""
    from pydantic import BaseModel

    found: dict[str, type] = {}
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("deepspeed"):
                found.setdefault(sub.__name__, sub)
            stack.append(sub)
    return found


def _field_names(model: type) -> set[str]:
    names: set[str] = set()
    for name, info in getattr(model, "model_fields", {}).items():
        names.add(name)
        if info.alias:
            names.add(info.alias)
    return names


def _nested_model(model: type, keys: typing.Sequence[str]) -> type | None:
    """Follow ``keys`` through a pydantic model's field annotations to the model they lead to."""
    from pydantic import BaseModel

    for key in keys:
        fields = getattr(model, "model_fields", {})
        info = fields.get(key) or next((f for f in fields.values() if f.alias == key), None)
        if info is None:
            return None
        candidates = [info.annotation, *typing.get_args(info.annotation)]
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return None
        model = nested
    return model


def _delete(data: dict[str, Any], path: KeyPath) -> bool:
    node: Any = data
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    if isinstance(node, dict) and path and path[-1] in node:
        del node[path[-1]]
        return True
    return False


def _neutralise(data: dict[str, Any], module: ModuleType) -> list[ParseIssue]:
    """Drop what clusterkit judges itself from the copy DeepSpeed parses; report removed blocks."""
    issues: list[ParseIssue] = []
    removed_top: dict[str, str] = getattr(module, "_REMOVED_TOP_LEVEL_CONFIG_KEYS", {})
    removed_zero: dict[str, str] = getattr(module, "_REMOVED_ZERO_CONFIG_KEYS", {})
    for key, message in removed_top.items():
        if key in data:
            issues.append(ParseIssue((key,), "removed-key", message))
            del data[key]
    zero = data.get("zero_optimization")
    if isinstance(zero, dict):
        for key, message in removed_zero.items():
            if key in zero:
                issues.append(ParseIssue(("zero_optimization", key), "removed-key", message))
                del zero[key]
    fp16, bf16 = data.get("fp16"), data.get("bf16", data.get("bfloat16"))
    if isinstance(fp16, dict) and isinstance(bf16, dict) and fp16.get("enabled") is True \
            and bf16.get("enabled") is True:
        bf16["enabled"] = False  # judged by the precision-exclusive rule
    return issues


def _validation_issues(exc: Any, base: KeyPath, models: dict[str, type]) -> list[ParseIssue]:
    issues = []
    root = models.get(getattr(exc, "title", ""))
    for error in exc.errors():
        loc = tuple(str(part) for part in error.get("loc", ()))
        path = (*base, *loc)
        if error.get("type") == "extra_forbidden":
            model = _nested_model(root, loc[:-1]) if root is not None else None
            known = _field_names(model) if model is not None else set()
            issues.append(ParseIssue(path, "unknown-key", f"DeepSpeed refuses unknown key "
                                     f"{dotted(path)!r} ({error.get('msg', 'extra field')})",
                                     suggest(loc[-1], known) if loc else ()))
        else:
            shown = repr(error.get("input"))[:60] if loc else ""
            value = f" = {shown}" if shown else ""
            issues.append(ParseIssue(path, "invalid-value", f"DeepSpeed refuses {dotted(path) or 'the section'}"
                                     f"{value}: {error.get('msg', 'invalid')}"))
    return issues


def _top_level_keys(module: ModuleType) -> frozenset[str]:
    trace = _Trace()
    config = module.DeepSpeedConfig.__new__(module.DeepSpeedConfig)
    config.world_size, config.global_rank = 1, 0
    config._param_dict = _TracedDict({}, (), trace)
    with contextlib.suppress(Exception), _captured_deepspeed_log():
        config._initialize_params(config._param_dict)
        config.train_micro_batch_size_per_gpu = config.gradient_accumulation_steps = 1
        config._do_warning_check()  # reads vocabulary_size
    removed = set(getattr(module, "_REMOVED_TOP_LEVEL_CONFIG_KEYS", {}))
    return frozenset(trace.reads.get((), set()) | set(KEYS_READ_ELSEWHERE)) - removed


@functools.lru_cache(maxsize=1)
def known_top_level_keys() -> Maybe[frozenset[str]]:
    """Every top-level key the installed DeepSpeed reads (traced from a parse of an empty config)."""
    module = deepspeed_config_module()
    if isinstance(module, Unavailable):
        return module
    return _top_level_keys(module)


def judge_with_deepspeed(data: dict[str, Any]) -> Maybe[DeepSpeedVerdict]:
    """Run the installed DeepSpeed's config parser on ``data``; never raises."""
    module = deepspeed_config_module()
    if isinstance(module, Unavailable):
        return module
    top_keys = known_top_level_keys()
    assert not isinstance(top_keys, Unavailable)
    models = _model_classes()
    work = copy.deepcopy(data)
    issues = _neutralise(work, module)
    complete = False
    for _ in range(_MAX_PASSES):
        trace = _Trace()
        traced = _TracedDict(work, (), trace)
        config = module.DeepSpeedConfig.__new__(module.DeepSpeedConfig)
        config.world_size, config.global_rank = 1, 0
        config._param_dict = traced
        try:
            with _captured_deepspeed_log() as log:
                config._initialize_params(copy.copy(traced))
                # batch sizes are judged with the real world size by the batch rule
                config.train_micro_batch_size_per_gpu = config.gradient_accumulation_steps = 1
                config._do_error_check()
                config._do_warning_check()
        except Exception as exc:
            from pydantic import ValidationError

            if isinstance(exc, ValidationError):
                base = _validation_base(trace)
                found = _validation_issues(exc, base, models)
                issues += found
                deleted = [_delete(work, issue.path) for issue in found]
                if any(deleted) or _delete(work, base):
                    continue
                break
            text = str(exc) or type(exc).__name__
            where = _locate(text, work) or trace.last
            issues.append(ParseIssue(where, "rejected", f"DeepSpeed refuses it: {type(exc).__name__}: {text}"))
            if not _delete(work, where):
                break
            continue
        issues += [ParseIssue(_locate(message, work), "warning", message) for message in log.messages]
        issues += _ignored(work, trace, config, top_keys)
        complete = True
        break
    version = deepspeed_version()
    return DeepSpeedVerdict(version if isinstance(version, str) else "unknown", tuple(issues), complete,
                            top_keys)


def _validation_base(trace: _Trace) -> KeyPath:
    """The dict a failing model was built from: the last dict handed over whole during the parse."""
    last = trace.last
    while last and last not in trace.whole:
        last = last[:-1]
    return last


def _locate(message: str, data: dict[str, Any]) -> KeyPath:
    """Best guess at the key a DeepSpeed log message is about: the longest key path named in it."""
    best: KeyPath = ()
    stack: list[tuple[KeyPath, Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                child = (*path, key)
                if len(key) > 2 and key in message and len(key) > len(best[-1] if best else ""):
                    best = child
                stack.append((child, value))
    return best


def _ignored(data: dict[str, Any], trace: _Trace, config: object, top_keys: frozenset[str]
             ) -> list[ParseIssue]:
    """Keys present in ``data`` that a complete parse never read, under dicts DeepSpeed is done with."""
    issues: list[ParseIssue] = []
    read_top = trace.reads.get((), set()) | set(KEYS_READ_ELSEWHERE)
    for key in data:
        if key not in read_top:
            known = key in top_keys
            why = ("DeepSpeed does not read it with the rest of this config" if known
                   else "not a DeepSpeed config key; DeepSpeed ignores it without a word")
            issues.append(ParseIssue((key,), "ignored-key", f"{key!r}: {why}",
                                     () if known else suggest(key, top_keys)))
    kept = _reachable_ids({k: v for k, v in vars(config).items() if k != "_param_dict"}, set())
    for path, traced in trace.dicts.items():
        if not path or path in trace.whole or id(traced) in kept or path not in trace.reads:
            continue
        read = trace.reads[path]
        for key in dict.keys(traced):
            if key not in read:
                where = dotted((*path, key))
                issues.append(ParseIssue((*path, key), "ignored-key",
                                         f"{where!r}: DeepSpeed never reads this key in {dotted(path)!r}",
                                         suggest(key, read)))
    return issues
