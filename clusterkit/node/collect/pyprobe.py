"""Runs INSIDE the training interpreter and prints one JSON object describing it.

clusterkit passes this file's source to ``<python> -c``, so it must run on Python 3.8+ with the
standard library only, in whatever environment it lands in, and never crash: each part is guarded
and a part that fails is reported as ``{"unavailable": "<reason>"}``.

Anything the imported libraries print (DeepSpeed logs to stdout on import) is sent to stderr; the
JSON goes to the original stdout on a single line that starts with ``MARKER``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
import traceback
from typing import Any

MARKER = "CLUSTERKIT_PYPROBE "


def _unavailable(reason: str) -> dict[str, str]:
    return {"unavailable": reason}


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def env_hash() -> dict[str, Any]:
    """sha256 over the sorted ``name==version`` of every installed distribution."""
    try:
        import importlib.metadata as metadata
    except ImportError as exc:
        return _unavailable("importlib.metadata missing: " + _why(exc))
    entries = set()
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except Exception:
            name = None
        if not name:
            continue
        normalized = re.sub(r"[-_.]+", "-", str(name)).lower()
        entries.add(f"{normalized}=={dist.version}")
    digest = hashlib.sha256("\n".join(sorted(entries)).encode("utf-8")).hexdigest()
    return {"sha256": digest, "count": len(entries)}


def _nccl_version_text(raw: object) -> str:
    if isinstance(raw, (tuple, list)):
        return ".".join(str(part) for part in raw)
    if isinstance(raw, int):
        # Older torch returns NCCL_VERSION_CODE: 2708 before NCCL 2.9, 21903 from 2.9 on.
        if raw >= 10000:
            return f"{raw // 10000}.{(raw % 10000) // 100}.{raw % 100}"
        return f"{raw // 1000}.{(raw % 1000) // 100}.{raw % 100}"
    return str(raw)


def torch_facts(report: dict[str, Any]) -> None:
    """Fill ``report`` with torch's version, CUDA build, devices, arch list, NCCL and CUDA_HOME."""
    keys = ("torch_version", "torch_cuda", "torch_cuda_available", "torch_device_count",
            "torch_arch_list", "nccl_version", "cpp_ext_cuda_home")
    try:
        import torch
    except BaseException as exc:
        for key in keys:
            report[key] = _unavailable("import torch failed: " + _why(exc))
        return
    report["torch_version"] = str(torch.__version__)
    cuda = getattr(torch.version, "cuda", None)
    report["torch_cuda"] = None if cuda is None else str(cuda)
    try:
        report["torch_cuda_available"] = bool(torch.cuda.is_available())
    except BaseException as exc:
        report["torch_cuda_available"] = _unavailable("torch.cuda.is_available() failed: " + _why(exc))
    try:
        report["torch_device_count"] = int(torch.cuda.device_count())
    except BaseException as exc:
        report["torch_device_count"] = _unavailable("torch.cuda.device_count() failed: " + _why(exc))
    try:
        # get_arch_list() returns [] when no GPU is usable; the compiled list is what we want.
        flags_getter = getattr(torch._C, "_cuda_getArchFlags", None)
        flags = flags_getter() if flags_getter is not None else None
        report["torch_arch_list"] = flags.split() if flags else list(torch.cuda.get_arch_list())
    except BaseException as exc:
        report["torch_arch_list"] = _unavailable("torch arch list failed: " + _why(exc))
    if cuda is None:
        report["nccl_version"] = _unavailable(
            "torch.version.cuda is None (a CPU build): torch carries no NCCL")
    else:
        try:
            import torch.cuda.nccl as nccl_module
            nccl: Any = nccl_module
            report["nccl_version"] = _nccl_version_text(nccl.version())
        except BaseException as exc:
            report["nccl_version"] = _unavailable("torch.cuda.nccl.version() failed: " + _why(exc))
    try:
        import torch.utils.cpp_extension as cpp_extension
        home = cpp_extension.CUDA_HOME
        report["cpp_ext_cuda_home"] = None if home is None else str(home)
    except BaseException as exc:
        report["cpp_ext_cuda_home"] = _unavailable("import torch.utils.cpp_extension failed: " + _why(exc))


def deepspeed_facts(report: dict[str, Any]) -> None:
    """Fill ``report`` with DeepSpeed's version and the text of its own ``ds_report``."""
    try:
        import deepspeed
    except BaseException as exc:
        reason = _unavailable("import deepspeed failed: " + _why(exc))
        report["deepspeed_version"] = reason
        report["ds_report"] = reason
        return
    report["deepspeed_version"] = str(getattr(deepspeed, "__version__", "unknown"))
    captured = io.StringIO()
    try:
        from deepspeed.env_report import main as ds_report_main
        with contextlib.redirect_stdout(captured):
            # The same call the `ds_report` console script makes with no arguments.
            ds_report_main(hide_operator_status=False, hide_errors_and_warnings=False)
        report["ds_report"] = captured.getvalue()
    except BaseException as exc:
        tail = captured.getvalue()[-2000:]
        last = traceback.format_exc().strip().splitlines()[-1:]
        report["ds_report"] = _unavailable("ds_report failed: {} ({}); output so far: {!r}".format(
            _why(exc), " ".join(last), tail))


def probe() -> dict[str, Any]:
    """Everything clusterkit wants to know about this interpreter, as a JSON-ready dict."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    report: dict[str, Any] = {
        "version": "{}.{}.{}".format(*sys.version_info[:3]),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "ninja_path": shutil.which("ninja"),
    }
    try:
        report["env_hash"] = env_hash()
    except BaseException as exc:
        report["env_hash"] = _unavailable("cannot list distributions: " + _why(exc))
    timings["env_hash_s"] = round(time.monotonic() - started, 3)
    mark = time.monotonic()
    torch_facts(report)
    timings["torch_s"] = round(time.monotonic() - mark, 3)
    mark = time.monotonic()
    deepspeed_facts(report)
    timings["deepspeed_s"] = round(time.monotonic() - mark, 3)
    timings["total_s"] = round(time.monotonic() - started, 3)
    report["timings"] = timings
    return report


def main() -> None:
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # whatever the libraries print (Python or C level) lands on stderr
    try:
        report = probe()
    except BaseException as exc:
        report = {"probe_error": _why(exc)}
    sys.stdout.flush()
    line = MARKER + json.dumps(report, default=str) + "\n"
    with os.fdopen(real_stdout, "w") as out:
        out.write(line)
    sys.stderr.flush()
    # Skip interpreter teardown: torch's exit handlers cost about half a second and tell us nothing.
    os._exit(0)


if __name__ == "__main__":
    main()
