"""The launch line under Slurm: srun running DeepSpeed's own per-node launcher on every node.

DeepSpeed's pdsh launcher logs into each node and runs ``python -u -m deepspeed.launcher.launch
--world_info=... --node_rank=%n ...``, which starts that node's ranks with RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT and CUDA_VISIBLE_DEVICES set. Under Slurm the same per-node launcher runs
as one srun task per node instead, its node rank taken from ``SLURM_NODEID`` (the node's index in the
step, which lists the nodes in the allocation's order, the order ``world_info`` is written in):

    srun --jobid=J --nodes=3 --ntasks=3 --ntasks-per-node=1 --nodelist=node[1-3] --kill-on-bad-exit=1
         --chdir=/repo --cpus-per-task=2 --export=ALL env PYTHONPATH=/repo
         /bin/sh -c 'exec "$0" -u -m deepspeed.launcher.launch --node_rank="$SLURM_NODEID" "$@"'
         /opt/env/bin/python --world_info=... --master_addr=10.0.0.11 --master_port=29500 train.py ARGS

DeepSpeed's own Slurm launcher (``deepspeed --launcher slurm``) runs ``srun -n WORLD python script``
instead: ranks then get none of those variables and ``deepspeed.init_distributed`` needs mpi4py to find
them (see the ``slurm-startup-env`` check); clusterkit prints that line only when asked.
Pure: nothing here runs or reads anything.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from clusterkit.core.hostlist import compress
from clusterkit.core.inventory import ActiveHost
from clusterkit.core.launchline import LaunchPlan, script_arguments
from clusterkit.node.facts import SlurmJobFacts, SlurmLaunchIntent

#: ``clusterkit launch --launcher`` values under Slurm: clusterkit's srun line, or DeepSpeed's Slurm launcher.
SRUN_LAUNCHER = "srun"
DEEPSPEED_SLURM_LAUNCHER = "slurm"
SLURM_LAUNCHERS = (SRUN_LAUNCHER, DEEPSPEED_SLURM_LAUNCHER)
#: Runs DeepSpeed's launch.py with this node's rank; "$0" is the interpreter, "$@" launch.py's arguments.
NODE_RANK_WRAPPER = 'exec "$0" -u -m deepspeed.launcher.launch --node_rank="$SLURM_NODEID" "$@"'


def encode_world_info(hosts: Sequence[ActiveHost]) -> str:
    """DeepSpeed's ``--world_info``: ``{host: [slots]}`` as JSON, urlsafe base64 (runner.encode_world_info)."""
    world = {host.name: list(host.slots) for host in hosts}
    return base64.urlsafe_b64encode(json.dumps(world).encode("utf-8")).decode("utf-8")


@dataclass
class SrunPlan:
    """What the srun line says beyond DeepSpeed's own launch plan (``base``)."""

    base: LaunchPlan
    hosts: list[ActiveHost]
    cwd: str
    #: The allocation to run in; None prints a line for whichever allocation it is run inside.
    job_id: str | None = None
    cpus_per_task: int | None = None
    gpus_per_node: int = 0
    #: Variables every rank gets on top of the launching shell's (srun exports it whole): what DeepSpeed's
    #: runner would export, .deepspeed_env lines and PYTHONPATH with the launch directory first.
    exports: Mapping[str, str] = field(default_factory=dict)
    #: More srun arguments (``--launcher-args``).
    srun_args: str = ""


def runner_exports(cwd: str, pythonpath: str | None, deepspeed_env: Mapping[str, str]) -> dict[str, str]:
    """What DeepSpeed's runner adds to every rank's environment: PYTHONPATH with the launch directory
    first (runner.py does so before any multi-node launch), then the .deepspeed_env values."""
    exports = {"PYTHONPATH": f"{cwd}:{pythonpath}" if pythonpath else cwd}
    exports.update(deepspeed_env)
    return exports


def build_srun_line(plan: SrunPlan) -> list[str]:
    """srun argv: one task per node running DeepSpeed's launch.py with that node's rank."""
    names = [h.name for h in plan.hosts]
    base = plan.base
    line = ["srun"]
    if plan.job_id:
        line.append(f"--jobid={plan.job_id}")
    line += [f"--nodes={len(names)}", f"--ntasks={len(names)}", "--ntasks-per-node=1",
             f"--nodelist={compress(names)}", "--kill-on-bad-exit=1", f"--chdir={plan.cwd}"]
    if plan.cpus_per_task:
        line.append(f"--cpus-per-task={plan.cpus_per_task}")
    if plan.gpus_per_node:
        line.append(f"--gres=gpu:{plan.gpus_per_node}")
    line.append("--export=ALL")
    line += shlex.split(plan.srun_args)
    if plan.exports:
        line += ["env", *(f"{key}={value}" for key, value in plan.exports.items())]
    line += ["/bin/sh", "-c", NODE_RANK_WRAPPER, base.python, f"--world_info={encode_world_info(plan.hosts)}"]
    if base.master_addr:
        line.append(f"--master_addr={base.master_addr}")
    if base.master_port is not None:
        line.append(f"--master_port={base.master_port}")
    if base.module:
        line.append("--module")
    return [*line, base.script, *script_arguments(base)]


def launch_intent(launcher: str, hosts: Sequence[ActiveHost], cpus_per_task: int | None, script_args: Sequence[str],
                  checkpoint_every: str | None) -> SlurmLaunchIntent:
    """What a launch asks of Slurm, for the Slurm checks: ``cpus_per_task`` None means every CPU the job
    holds on a node (:func:`with_job_cpus` fills it in from the job). ValueError for a bad interval."""
    interval = parse_interval(checkpoint_every) if checkpoint_every else None
    no_checkpoints = saves_no_checkpoints(script_args)
    source = f"--checkpoint-every {checkpoint_every}" if checkpoint_every else ""
    return SlurmLaunchIntent(launcher=launcher, ranks_per_node=max((len(h.slots) for h in hosts), default=1),
                             cpus_per_node_task=cpus_per_task if launcher == SRUN_LAUNCHER else None,
                             dataloader_workers=dataloader_workers(script_args), checkpoint_interval_s=interval,
                             checkpoint_source="--save_strategy no" if no_checkpoints else source,
                             no_checkpoints=no_checkpoints)


def with_job_cpus(intent: SlurmLaunchIntent, job: SlurmJobFacts, hosts: Sequence[ActiveHost]) -> SlurmLaunchIntent:
    """The intent with the CPUs the srun line asks for when none were given: the fewest the job holds on
    any of ``hosts`` (as :meth:`clusterkit.cluster.slurm.SlurmNodes.launch_line` does)."""
    if intent.launcher != SRUN_LAUNCHER or intent.cpus_per_node_task is not None:
        return intent
    held = min((job.cpus_per_node.get(h.name, 0) for h in hosts), default=0)
    return replace(intent, cpus_per_node_task=held or None)


def dataloader_workers(script_args: Sequence[str]) -> int | None:
    """``--dataloader_num_workers N`` (the HF Trainer's flag) in the script's arguments, if given."""
    return _int_flag(script_args, "--dataloader_num_workers")


def saves_no_checkpoints(script_args: Sequence[str]) -> bool:
    """The HF Trainer's ``--save_strategy no``."""
    value = _flag(script_args, "--save_strategy")
    return value is not None and value.lower() == "no"


def _flag(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def _int_flag(args: Sequence[str], name: str) -> int | None:
    value = _flag(args, name)
    return int(value) if value is not None and value.isdigit() else None


def parse_interval(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m`` or a number of seconds -> seconds; ValueError otherwise."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (write 90s, 30m, 2h or 1h30m)")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(number) * unit[suffix] for number, suffix in parts)
