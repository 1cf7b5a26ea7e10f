"""Typed facts rebuilt from their JSON form (:func:`clusterkit.node.facts.to_jsonable`), types checked on the way.

The head decodes what agents send; nodes only encode, so this stays out of the agent's files.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, TypeVar, Union

from clusterkit.node.facts import Unavailable

T = TypeVar("T")


class FactsDecodeError(ValueError):
    """Facts JSON that does not match the schema; the message names the path (``gpus[0].uuid``)."""


def from_jsonable(cls: type[T], data: Any) -> T:
    """Rebuild typed facts from :func:`to_jsonable` output, checking types on the way."""
    return typing.cast(T, _decode(cls, data, cls.__name__))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Resolving string annotations costs most of a decode; a class's hints never change.
    return typing.get_type_hints(cls)


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


_UNION_TYPE = getattr(types, "UnionType", Union)  # `X | Y` annotations (3.10+)


def _decode(tp: Any, data: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return data
    if origin is Union or origin is _UNION_TYPE:
        if isinstance(data, dict) and set(data) == {"unavailable"} and Unavailable in args:
            return Unavailable(str(data["unavailable"]))
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg in (Unavailable, type(None)):
                continue
            try:
                return _decode(arg, data, path)
            except FactsDecodeError as exc:
                errors.append(str(exc))
        raise FactsDecodeError(errors[0] if errors else f"{path}: unexpected {type(data).__name__}")
    if origin in (list, list):
        if not isinstance(data, list):
            raise FactsDecodeError(f"{path}: expected a list, got {type(data).__name__}")
        return [_decode(args[0], item, f"{path}[{i}]") for i, item in enumerate(data)]
    if origin in (dict, dict):
        if not isinstance(data, dict):
            raise FactsDecodeError(f"{path}: expected an object, got {type(data).__name__}")
        return {str(k): _decode(args[1], v, f"{path}.{k}") for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise FactsDecodeError(f"{path}: expected an object, got {type(data).__name__}")
        cls = typing.cast(type, tp)
        hints = _hints(cls)
        kwargs = {}
        for f in _fields(cls):
            if f.name in data:
                kwargs[f.name] = _decode(hints[f.name], data[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise FactsDecodeError(f"{path}.{f.name}: missing")
        return tp(**kwargs)  # type: ignore[operator]
    if tp is float:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return float(data)
        raise FactsDecodeError(f"{path}: expected a number, got {type(data).__name__}")
    if tp in (int, str, bool):
        if isinstance(data, tp) and not (tp is int and isinstance(data, bool)):
            return data
        raise FactsDecodeError(f"{path}: expected {tp.__name__}, got {type(data).__name__}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError as exc:
            raise FactsDecodeError(f"{path}: {exc}") from None
    raise FactsDecodeError(f"{path}: cannot decode type {tp!r}")
