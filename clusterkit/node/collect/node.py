"""Gather every section of :class:`NodeFacts` in parallel, each behind its own deadline.

A section whose collector raises or hangs becomes ``Unavailable`` with the reason; the other
sections are still reported. Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from clusterkit.node.collect.cuda import collect_cuda
from clusterkit.node.collect.envvars import collect_env_vars
from clusterkit.node.collect.gpu import collect_nvidia
from clusterkit.node.collect.launcher import collect_launcher
from clusterkit.node.collect.network import collect_network
from clusterkit.node.collect.options import CollectOptions
from clusterkit.node.collect.pyenv import collect_python_env
from clusterkit.node.collect.system import collect_host, collect_system
from clusterkit.node.facts import SCHEMA_VERSION, Maybe, NodeFacts, Unavailable

#: Section name -> its collector (each takes CollectOptions and returns the section).
SECTIONS: dict[str, Callable[[CollectOptions], object]] = {
    "system": collect_system,
    "nvidia": collect_nvidia,
    "network": collect_network,
    "cuda": collect_cuda,
    "python_env": collect_python_env,
    "launcher": collect_launcher,
}

__all__ = ["SECTIONS", "CollectOptions", "collect_node"]


def collect_node(options: CollectOptions | None = None) -> NodeFacts:
    """Collect all facts about this machine. Never raises for a failing section."""
    opts = options or CollectOptions()
    started = time.time()
    wanted = opts.sections if opts.sections is not None else list(SECTIONS)
    results: dict[str, Maybe[object]] = {}
    timings: dict[str, float] = {}

    def run(name: str) -> None:
        t0 = time.monotonic()
        try:
            results[name] = SECTIONS[name](opts)
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
            return Unavailable("not collected (not asked for)")
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
