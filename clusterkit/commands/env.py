"""``clusterkit env``: a block to paste into a bug report, built from this machine's facts."""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

from clusterkit import __version__
from clusterkit.commands import envpack
from clusterkit.node.facts import Maybe, NodeFacts, Unavailable

_SHOWN_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "LD_LIBRARY_PATH")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("env", help="print this machine's versions, paste-ready for a bug report")
    parser.add_argument("--python", metavar="PATH",
                        help="training interpreter to describe (default: this one)")
    parser.add_argument("--json", action="store_true", help="print the same information as JSON")
    parser.set_defaults(run=run)
    envpack.register_subcommands(parser)  # clusterkit env pack | push | verify


def _text(value: Maybe[Any]) -> str:
    if isinstance(value, Unavailable):
        return f"unavailable ({value.reason})"
    if value is None:
        return "none"
    return str(value)


def _gib(value: Maybe[int]) -> str:
    return _text(value) if isinstance(value, Unavailable) else f"{value / 1024**3:.1f} GiB"


def gather_env_info(facts: NodeFacts) -> dict[str, str]:
    """The lines of the report, as label -> value. Pure: facts in, text out."""
    info = {
        "clusterkit": __version__,
        "host": f"{facts.host.hostname} ({_text(facts.host.os_name)}, kernel {facts.host.kernel}, "
                f"{facts.host.arch})",
        "clusterkit python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    py = facts.python_env
    if isinstance(py, Unavailable):
        info["training python"] = _text(py)
    else:
        info["training python"] = f"{py.interpreter} ({_text(py.version)})"
        info["torch"] = f"{_text(py.torch_version)} (CUDA build: {_text(py.torch_cuda)}, CUDA available: " \
                        f"{_text(py.torch_cuda_available)}, NCCL: {_text(py.nccl_version)})"
        info["deepspeed"] = _text(py.deepspeed_version)
        info["ninja"] = _text(py.ninja_path)
    nv = facts.nvidia
    if isinstance(nv, Unavailable):
        info["nvidia"] = _text(nv)
    else:
        info["nvidia driver"] = f"{_text(nv.driver_version)} (supports CUDA {_text(nv.cuda_driver_version)})"
        if isinstance(nv.gpus, Unavailable):
            info["gpus"] = _text(nv.gpus)
        else:
            names: dict[str, int] = {}
            for gpu in nv.gpus:
                names[gpu.name] = names.get(gpu.name, 0) + 1
            info["gpus"] = ", ".join(f"{n} x {name}" for name, n in names.items()) or "none"
    cuda = facts.cuda
    if not isinstance(cuda, Unavailable):
        info["nvcc"] = f"{_text(cuda.nvcc_version)} ({_text(cuda.nvcc_path)})"
        info["CUDA_HOME"] = _text(cuda.cuda_home)
        if not isinstance(cuda.libraries, Unavailable):
            sonames = sorted({lib.soname for lib in cuda.libraries})
            info["cuda libraries"] = ", ".join(sonames) or "none found by the loader"
    system = facts.system
    if not isinstance(system, Unavailable):
        info["cpus / ram"] = f"{_text(system.logical_cpus)} CPUs, {_gib(system.mem_total_bytes)} RAM"
        if not isinstance(system.shm, Unavailable):
            info["/dev/shm"] = _gib(system.shm.total_bytes)
    launcher = facts.launcher
    if not isinstance(launcher, Unavailable):
        info["pdsh"] = _text(launcher.pdsh_path)
    for key, value in facts.env_vars.items():
        if key in _SHOWN_ENV or key.startswith("NCCL_"):
            info[f"${key}"] = value
    return info


def run(args: argparse.Namespace) -> int:
    from clusterkit.node.collect.node import CollectOptions, collect_node

    options = CollectOptions()
    if args.python:
        options.python = args.python
    info = gather_env_info(collect_node(options))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("Copy-and-paste the text below into your bug report:\n")
    print("```")
    for label, value in info.items():
        print(f"- {label}: {value}")
    print("```")
    return 0
