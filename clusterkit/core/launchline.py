"""The ``deepspeed`` command line for a launch, built in the order DeepSpeed's runner parses it.

Pure: no SSH, no files read. Everything before the user's script is an option of DeepSpeed's runner
(``deepspeed/launcher/runner.py``); everything after it goes to the script untouched, because the
runner stops parsing at the script (``argparse.REMAINDER``). A runner option put after the script is
silently handed to the script instead, the classic way a ``--master_port`` or ``--include`` is lost.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clusterkit.core.inventory import ActiveHost

#: How a training script takes its DeepSpeed config: DeepSpeed's ``add_config_arguments`` flag, or the
#: HF Trainer's ``--deepspeed FILE``.
DEFAULT_CONFIG_FLAG = "--deepspeed_config"
HF_CONFIG_FLAG = "--deepspeed"
CONFIG_FLAGS = (DEFAULT_CONFIG_FLAG, HF_CONFIG_FLAG)
#: DeepSpeed's multi-node launchers (its runner's ``--launcher``), pdsh its default.
DEEPSPEED_LAUNCHERS = ("pdsh", "openmpi", "mpich", "impi", "mvapich", "slurm")
#: DeepSpeed's default rendezvous port (TORCH_DISTRIBUTED_DEFAULT_PORT), its runner's and launch.py's.
DEFAULT_MASTER_PORT = 29500
#: ``clusterkit launch --config-style`` -> the flag the script reads its config from.
CONFIG_STYLES = {"deepspeed": DEFAULT_CONFIG_FLAG, "hf": HF_CONFIG_FLAG}


@dataclass(frozen=True)
class ConfigInArgs:
    """Where the script's arguments already name a DeepSpeed config."""

    path: str
    flag: str


@dataclass
class LaunchPlan:
    """Everything the ``deepspeed`` line says; ``None`` leaves DeepSpeed's own default."""

    python: str
    hostfile: str
    script: str
    script_args: list[str] = field(default_factory=list)
    include: str = ""
    exclude: str = ""
    launcher: str = "pdsh"
    launcher_args: str = ""
    master_addr: str | None = None
    master_port: int | None = None
    ssh_port: int | None = None
    module: bool = False
    #: A config to hand to the script when its arguments do not name one already.
    deepspeed_config: str | None = None
    config_flag: str = DEFAULT_CONFIG_FLAG
    #: One active host that is another machine: DeepSpeed's runner would start the ranks here, on the
    #: launching machine, unless told to go through the multi-node launcher anyway.
    force_multi: bool = False
    #: One active host that is this machine: no SSH at all (DeepSpeed still tests the first host's SSH).
    no_ssh_check: bool = False


def deepspeed_launcher(python: str) -> str:
    """The ``deepspeed`` script of the env ``python`` belongs to.

    DeepSpeed's runner starts every rank with its own ``sys.executable``, so the launcher must come
    from the training env, not from whatever ``deepspeed`` is first on PATH.
    """
    return str(PurePosixPath(python).parent / "deepspeed")


def config_in_args(args: Sequence[str]) -> ConfigInArgs | None:
    """The DeepSpeed config the script's arguments name, if any.

    ``--deepspeed_config FILE`` and ``--deepspeed_config=FILE`` (DeepSpeed), ``--deepspeed FILE`` and
    ``--deepspeed=FILE`` (HF Trainer). A bare ``--deepspeed`` followed by another flag is DeepSpeed's
    boolean switch and names nothing.
    """
    for i, arg in enumerate(args):
        for flag in CONFIG_FLAGS:
            if arg.startswith(flag + "="):
                return ConfigInArgs(arg.split("=", 1)[1], flag)
            if arg == flag and i + 1 < len(args) and not args[i + 1].startswith("-"):
                return ConfigInArgs(args[i + 1], flag)
    return None


def script_arguments(plan: LaunchPlan) -> list[str]:
    """The script's arguments, with ``--deepspeed_config`` (or the plan's flag) added when missing."""
    args = list(plan.script_args)
    if plan.deepspeed_config and config_in_args(args) is None:
        args += [plan.config_flag, plan.deepspeed_config]
    return args


def build_launch_line(plan: LaunchPlan) -> list[str]:
    """``deepspeed`` argv: runner options first, then the script and its arguments."""
    line = [deepspeed_launcher(plan.python), "--hostfile", plan.hostfile]
    if plan.include:
        line += ["--include", plan.include]
    if plan.exclude:
        line += ["--exclude", plan.exclude]
    line += ["--launcher", plan.launcher]
    if plan.force_multi:
        line.append("--force_multi")
    if plan.no_ssh_check:
        line.append("--no_ssh_check")
    if plan.launcher_args:
        line += ["--launcher_args", plan.launcher_args]
    if plan.master_addr:
        line += ["--master_addr", plan.master_addr]
    if plan.master_port is not None:
        line += ["--master_port", str(plan.master_port)]
    if plan.ssh_port is not None:
        line += ["--ssh_port", str(plan.ssh_port)]
    if plan.module:
        line.append("--module")
    return [*line, plan.script, *script_arguments(plan)]


def include_spec(hosts: Sequence[ActiveHost]) -> str:
    """DeepSpeed's ``--include`` naming exactly these hosts and slots: ``node1:0,1@node2:0``."""
    return "@".join(f"{h.name}:{','.join(str(s) for s in h.slots)}" for h in hosts)


def include_for(chosen: Sequence[ActiveHost], whole: Sequence[ActiveHost]) -> str:
    """``--include`` for ``chosen`` out of the hostfile's ``whole``: none when they are all of it."""
    same = [(h.name, h.slots) for h in chosen] == [(h.name, h.slots) for h in whole]
    return "" if same else include_spec(chosen)


def selection_for(plan: LaunchPlan, chosen: Sequence[ActiveHost], selected: Sequence[ActiveHost],
                  whole: Sequence[ActiveHost]) -> tuple[str, str]:
    """``--include``/``--exclude`` for ``chosen`` out of the hostfile's ``whole``: the plan's own words
    when they chose ``selected`` and ``chosen`` is that selection (a line as the user wrote it), else
    the exact hosts and slots (none when they are the whole hostfile)."""
    if (plan.include or plan.exclude) and [(h.name, h.slots) for h in chosen] == \
            [(h.name, h.slots) for h in selected]:
        return plan.include, plan.exclude
    return include_for(chosen, whole), ""


def shell_line(argv: Sequence[str]) -> str:
    """One copy-pastable shell line (each word quoted only where it needs it)."""
    return shlex.join(argv)
