"""The training interpreter: Python, torch, NCCL, DeepSpeed and its ops, as that interpreter sees them.

We never import torch here: the agent's own Python is usually not the training env. Instead
:mod:`clusterkit.node.collect.pyprobe` runs inside the target interpreter and prints one JSON object.
Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import json
import pkgutil
import time
from pathlib import Path
from typing import Any

from clusterkit.node.collect import probe_cache
from clusterkit.node.collect.deadline import run_command
from clusterkit.node.collect.ds_report import parse_ds_general_info, parse_ds_report
from clusterkit.node.collect.options import CollectOptions
from clusterkit.node.collect.pyprobe import MARKER
from clusterkit.node.facts import DsOpFacts, Maybe, PythonEnvFacts, Unavailable, known

PROBE_MARKER = MARKER
#: Time left to the rest of the section after the probe's own deadline.
PROBE_TIMEOUT_MARGIN_S = 2.0


def probe_source() -> str:
    """The source of :mod:`clusterkit.node.collect.pyprobe` (works from a zipapp too)."""
    data = pkgutil.get_data("clusterkit.node.collect", "pyprobe.py")
    if data is None:  # pragma: no cover - only for exotic loaders
        return (Path(__file__).with_name("pyprobe.py")).read_text(encoding="utf-8")
    return data.decode("utf-8")


def parse_probe_output(stdout: str) -> Maybe[dict[str, Any]]:
    """The probe's JSON object from its stdout (the last line carrying ``PROBE_MARKER``)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(PROBE_MARKER):
            try:
                data = json.loads(line[len(PROBE_MARKER):])
            except ValueError as exc:
                return Unavailable(f"probe printed malformed JSON: {exc}")
            if not isinstance(data, dict):
                return Unavailable(f"probe printed {type(data).__name__}, not an object")
            return data
    return Unavailable("probe printed no result line")


def run_probe(python: str, timeout_s: float, cwd: str | None = None) -> Maybe[dict[str, Any]]:
    """Run the probe in ``python`` and return its JSON object, or why that failed.

    ``cwd`` should be the launch directory: ``python -c`` puts it first on ``sys.path`` just as
    DeepSpeed's launcher does, so a stray ``torch/`` there shadows the installed one in both.
    """
    if cwd is not None and not Path(cwd).is_dir():
        cwd = None
    result = run_command([python, "-c", probe_source()], timeout_s=timeout_s, cwd=cwd)
    if not known(result):
        return Unavailable(f"probe in {python}: {result.reason}")
    data = parse_probe_output(result.stdout)
    if not known(data):
        detail = result.tail(3) or "no output"
        return Unavailable(f"probe in {python} exited {result.returncode}: {data.reason}: {detail}")
    if "probe_error" in data:
        return Unavailable(f"probe in {python} crashed: {data['probe_error']}")
    return data


def _reason_or(value: Any, what: str) -> Unavailable:
    if isinstance(value, dict) and isinstance(value.get("unavailable"), str):
        return Unavailable(value["unavailable"])
    if value is None:
        return Unavailable(f"probe reported no {what}")
    return Unavailable(f"probe reported {what} as unexpected {type(value).__name__}: {value!r:.80}")


def _text(data: dict[str, Any], key: str) -> Maybe[str]:
    value = data.get(key)
    return value if isinstance(value, str) else _reason_or(value, key)


def _optional_text(data: dict[str, Any], key: str) -> Maybe[str | None]:
    """A string, or ``None`` where the probe said None on purpose (a CPU torch has no CUDA)."""
    if key in data and data[key] is None:
        return None
    return _text(data, key)


def _boolean(data: dict[str, Any], key: str) -> Maybe[bool]:
    value = data.get(key)
    return value if isinstance(value, bool) else _reason_or(value, key)


def _integer(data: dict[str, Any], key: str) -> Maybe[int]:
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _reason_or(value, key)


def _text_list(data: dict[str, Any], key: str) -> Maybe[list[str]]:
    value = data.get(key)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return _reason_or(value, key)


def _env_hash(data: dict[str, Any]) -> Maybe[str]:
    value = data.get("env_hash")
    if isinstance(value, dict) and isinstance(value.get("sha256"), str):
        return str(value["sha256"])
    return _reason_or(value, "env_hash")


def _ds_parts(data: dict[str, Any]) -> tuple[Maybe[list[DsOpFacts]], Maybe[dict[str, str]]]:
    text = _text(data, "ds_report")
    if not known(text):
        return text, text
    ops = parse_ds_report(text)
    info = parse_ds_general_info(text)
    tail = " | ".join(text.strip().splitlines()[-3:])
    ops_or_reason: Maybe[list[DsOpFacts]] = (
        ops if ops else Unavailable(f"ds_report printed no op table: {tail!r:.300}"))
    info_or_reason: Maybe[dict[str, str]] = (
        info if info else Unavailable(f"ds_report printed no general info: {tail!r:.300}"))
    return ops_or_reason, info_or_reason


def facts_from_probe(interpreter: str, data: dict[str, Any]) -> PythonEnvFacts:
    """Typed facts from the probe's JSON; a value of the wrong type becomes ``Unavailable``."""
    ops, info = _ds_parts(data)
    ninja = data.get("ninja_path")
    return PythonEnvFacts(
        interpreter=interpreter,
        exists=True,
        version=_text(data, "version"),
        prefix=_text(data, "prefix"),
        env_hash=_env_hash(data),
        torch_version=_text(data, "torch_version"),
        torch_cuda=_optional_text(data, "torch_cuda"),
        torch_cuda_available=_boolean(data, "torch_cuda_available"),
        torch_device_count=_integer(data, "torch_device_count"),
        torch_arch_list=_text_list(data, "torch_arch_list"),
        nccl_version=_text(data, "nccl_version"),
        cpp_ext_cuda_home=_optional_text(data, "cpp_ext_cuda_home"),
        deepspeed_version=_text(data, "deepspeed_version"),
        deepspeed_ops=ops,
        ninja_path=ninja if isinstance(ninja, str) else Unavailable(
            "ninja not found on PATH of the training interpreter" if ninja is None
            else _reason_or(ninja, "ninja_path").reason),
        deepspeed_info=info,
    )


def unavailable_env(interpreter: str, exists: bool, reason: str) -> PythonEnvFacts:
    """Facts for an interpreter that could not be inspected: every field carries ``reason``."""
    why = Unavailable(reason)
    return PythonEnvFacts(
        interpreter=interpreter, exists=exists, version=why, prefix=why, env_hash=why,
        torch_version=why, torch_cuda=why, torch_cuda_available=why, torch_device_count=why,
        torch_arch_list=why, nccl_version=why, cpp_ext_cuda_home=why, deepspeed_version=why,
        deepspeed_ops=why, ninja_path=why, deepspeed_info=why,
    )


def collect_python_env(options: CollectOptions) -> PythonEnvFacts:
    """Inspect ``options.python`` by running the probe in it, within the section's deadline."""
    interpreter = options.python
    if not Path(interpreter).exists():
        return unavailable_env(interpreter, False, f"interpreter {interpreter} not found on this node")
    key: Maybe[str] = Unavailable("probe cache not used")
    if options.use_probe_cache:
        key = probe_cache.fingerprint(interpreter, options.cwd, probe_source())
        cached = probe_cache.load(key) if known(key) else None
        if cached is not None:
            facts = facts_from_probe(interpreter, cached["data"])
            facts.probed_at = cached["probed_at"]
            return facts
    timeout_s = max(1.0, options.section_timeout_s - PROBE_TIMEOUT_MARGIN_S)
    probed_at = time.time()
    data = run_probe(interpreter, timeout_s, cwd=options.cwd)
    if not known(data):
        return unavailable_env(interpreter, True, data.reason)
    if known(key):
        probe_cache.store(key, data, probed_at)
    facts = facts_from_probe(interpreter, data)
    facts.probed_at = probed_at
    return facts
