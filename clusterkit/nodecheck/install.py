"""What to install for clusterkit to be Slurm's node health check: slurm.conf lines and the hook scripts.

One script per hook, the same on every node (an image, a shared /etc/slurm, or config management).
Each names the interpreter clusterkit runs under and sets ``PATH`` itself: slurmd runs hooks with
an almost empty environment. ``timeout`` (coreutils) bounds even an interpreter that cannot start
(a hung NFS mount): slurmd would otherwise wait for it.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import clusterkit
from clusterkit import __version__
from clusterkit.nodecheck.profile import PROFILES, Hook
from clusterkit.nodecheck.runner import DEFAULT_LOG

#: First line after the shebang of every hook script: how ``doctor`` recognises one.
SCRIPT_MARK = "# clusterkit nodecheck hook"
DEFAULT_DIR = "/etc/slurm"
DEFAULT_INTERVAL_S = 300
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Seconds the outer ``timeout`` allows beyond the run's own budget before it kills the interpreter.
OUTER_GRACE_S = 10


@dataclass(frozen=True)
class InstallOptions:
    """Where the scripts go and what they run."""

    python: str
    directory: str = DEFAULT_DIR
    interval_s: int = DEFAULT_INTERVAL_S
    log_path: str = DEFAULT_LOG
    #: Budget of each run (None: the hook's own, see :mod:`clusterkit.nodecheck.profile`).
    budget_s: float | None = None
    #: Variables every hook script exports (a site's library path, a recorded NVML for a test node).
    env: Mapping[str, str] = field(default_factory=dict)


def script_path(options: InstallOptions, hook: Hook) -> str:
    return f"{options.directory.rstrip('/')}/clusterkit-{hook.value}"


def _source_dir() -> str | None:
    """The directory holding the clusterkit package when it is a checkout rather than an installed package."""
    parent = Path(clusterkit.__file__).resolve().parent.parent
    return None if parent.name in ("site-packages", "dist-packages") else str(parent)


def hook_script(options: InstallOptions, hook: Hook) -> str:
    """The script slurmd runs for ``hook``."""
    q = shlex.quote
    scontrol = shutil.which("scontrol")
    path = BASE_PATH + (f":{Path(scontrol).parent}" if scontrol and str(Path(scontrol).parent) not in BASE_PATH
                        else "")
    budget = options.budget_s if options.budget_s is not None else PROFILES[hook].budget_s
    exports = [f"PATH={q(path)}"]
    source = _source_dir()
    if source:
        exports.append(f"PYTHONPATH={q(source)}")
    exports += [f"{name}={q(value)}" for name, value in options.env.items()]
    args = ["run", "--hook", hook.value, "--quiet", "--log", options.log_path]
    if options.budget_s is not None:
        args += ["--budget", f"{options.budget_s:g}"]
    return "\n".join([
        "#!/bin/sh",
        f"{SCRIPT_MARK} {hook.value}, made by clusterkit {__version__} (`clusterkit nodecheck install`)",
        "# Prints nothing: what it finds and does is logged in " + options.log_path,
        *[f"export {line}" for line in exports],
        f"exec timeout -k 5 {budget + OUTER_GRACE_S:g} {q(options.python)} -m clusterkit.nodecheck "
        f"{shlex.join(args)} \"$@\"",
        "",
    ])


def slurm_conf_lines(options: InstallOptions) -> list[str]:
    """What slurm.conf needs (the same file on every node and the controller)."""
    prolog_budget = options.budget_s if options.budget_s is not None else PROFILES[Hook.PROLOG].budget_s
    return [
        f"HealthCheckProgram={script_path(options, Hook.HEALTH)}",
        f"HealthCheckInterval={options.interval_s}",
        "HealthCheckNodeState=ANY",
        f"Prolog={script_path(options, Hook.PROLOG)}",
        f"Epilog={script_path(options, Hook.EPILOG)}",
        "PrologFlags=Alloc",
        f"PrologEpilogTimeout={int(prolog_budget + OUTER_GRACE_S + 20)}",
        "SchedulerParameters=nohold_on_prolog_fail",
    ]


def install_text(options: InstallOptions) -> str:
    """The instructions ``clusterkit nodecheck install`` prints: slurm.conf lines, then each script."""
    lines = [
        "# 1. In slurm.conf (every node and the controller), then `scontrol reconfigure`:",
        *slurm_conf_lines(options),
        "#    HealthCheckNodeState=ANY: drained nodes are checked too, so a fixed one returns to service.",
        "#    PrologFlags=Alloc: the prolog runs when a job is allocated, salloc included, not at its first step.",
        "#    A failing prolog drains the node and requeues the job; nohold_on_prolog_fail keeps it from being",
        "#    held. Keep an existing SchedulerParameters' options beside it; an existing Prolog/Epilog can call",
        "#    these scripts instead.",
        f"# 2. On every node, these scripts (root-owned, mode 755), e.g. `clusterkit nodecheck install --write "
        f"{options.directory}`:",
    ]
    for hook in Hook:
        lines += ["", f"# --- {script_path(options, hook)}", hook_script(options, hook).rstrip("\n")]
    lines += ["", f"# 3. Check: `clusterkit doctor --slurm` (from a login node) says on which nodes it is installed "
              f"and at which version; each run appends one line to {options.log_path} on its node."]
    return "\n".join(lines) + "\n"


def write_scripts(options: InstallOptions) -> list[str]:
    """Write the three scripts into ``options.directory`` (mode 755); their paths."""
    written = []
    for hook in Hook:
        path = Path(script_path(options, hook))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(hook_script(options, hook), encoding="utf-8")
        path.chmod(0o755)
        written.append(str(path))
    return written
