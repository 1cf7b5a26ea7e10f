"""Gather every section of :class:`NodeFacts` in parallel, each behind its own deadline.

A section whose collector raises or hangs becomes ``Unavailable`` with the reason; the other
sections are still reported. Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from clusterkit.facts import SCHEMA_VERSION, Maybe, NodeFacts, Unavailable

#: Section name -> "module:function"; each function takes CollectOptions and returns the section.
SECTIONS: dict[str, str] = {
    "system": "clusterkit.collect.system:collect_system",
    "nvidia": "clusterkit.collect.gpu:collect_nvidia",
    "network": "clusterkit.collect.network:collect_network",
    "cuda": "clusterkit.collect.cuda:collect_cuda",
    "python_env": "clusterkit.collect.pyenv:collect_python_env",
    "launcher": "clusterkit.collect.launcher:collect_launcher",
}


@dataclass
class CollectOptions:
    """What to collect and how long each part may take."""

    #: The training interpreter to inspect (DeepSpeed's launcher runs this one on every node).
    python: str = field(default_factory=lambda: sys.executable)
    #: The directory jobs are launched from (code path); ``.deepspeed_env`` is looked up there too.
    cwd: str = field(default_factory=os.getcwd)
    #: Deadline for one section; the slowest section (Python env probe) sets the node's wall time.
    section_timeout_s: float = 30.0
    #: Deadline for a single NVML call: NVML hangs when the driver or a GPU is wedged.
    nvml_timeout_s: float = 5.0
    #: Sections to collect (None = all of SECTIONS).
    sections: list[str] | None = None
    #: Reuse the last Python-env probe while the env is unchanged (see collect/probe_cache.py).
    use_probe_cache: bool = True
    #: Hostfile names of the other nodes: known_hosts is read for them (SSH trust facts).
    peers: list[str] = field(default_factory=list)
    #: ``ADDRESS:PORT`` the head reached this node's sshd on: the host keys it serves are read there.
    sshd_address: str | None = None


def _load(spec: str) -> Callable[[CollectOptions], object]:
    module_name, func_name = spec.split(":")
    module = __import__(module_name, fromlist=[func_name])
    return getattr(module, func_name)  # type: ignore[no-any-return]


def collect_node(options: CollectOptions | None = None) -> NodeFacts:
    """Collect all facts about this machine. Never raises for a failing section."""
    from clusterkit.collect.envvars import collect_env_vars
    from clusterkit.collect.system import collect_host

    opts = options or CollectOptions()
    started = time.time()
    wanted = opts.sections if opts.sections is not None else list(SECTIONS)
    results: dict[str, Maybe[object]] = {}
    timings: dict[str, float] = {}

    def run(name: str) -> None:
        t0 = time.monotonic()
        try:
            results[name] = _load(SECTIONS[name])(opts)
        except Exception as exc:
            results[name] = Unavailable(f"collector crashed: {type(exc).__name__}: {exc}")
        timings[name] = round(time.monotonic() - t0, 3)

    threads = [threading.Thread(target=run, args=(name,), name="collect:" + name, daemon=True)
               for name in wanted if name in SECTIONS]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + opts.section_timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))

    def section(name: str) -> Maybe[object]:
        if name not in wanted:
            return Unavailable("not collected (--sections)")
        if name not in results:
            return Unavailable(f"collector did not finish within {opts.section_timeout_s:g}s")
        return results[name]

    return NodeFacts(
        schema_version=SCHEMA_VERSION,
        host=collect_host(),
        collected_at=started,
        system=section("system"),  # type: ignore[arg-type]
        nvidia=section("nvidia"),  # type: ignore[arg-type]
        network=section("network"),  # type: ignore[arg-type]
        cuda=section("cuda"),  # type: ignore[arg-type]
        python_env=section("python_env"),  # type: ignore[arg-type]
        launcher=section("launcher"),  # type: ignore[arg-type]
        env_vars=collect_env_vars(),
        timings_s=dict(timings),
    )
