"""Workloads in a Slurm allocation: started the way ``clusterkit launch`` starts a job there.

- The scripts: one srun step puts the bundle on every node that lacks it (it travels inside the step's
  command: some 30 KB), at the per-user path the SSH transport uses, or under ``--workdir``.
- The run: ``srun --label`` with a task per node running DeepSpeed's launch.py with the node's rank
  (:func:`clusterkit.slurmlaunch.build_srun_line`) instead of DeepSpeed's runner and pdsh; lines come
  back labelled with the task number, which is the node.
- A run stopped (deadline, failed rank) has its ranks left on the nodes ended by another srun step,
  by the run id every workload carries.
"""

from __future__ import annotations

import base64
import shlex
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from clusterkit.cluster.shell import kill_by_run_id_command
from clusterkit.errors import ClusterkitError
from clusterkit.inventory import ActiveHost
from clusterkit.launchline import LaunchPlan
from clusterkit.remote import HostResult
from clusterkit.remote.slurm import Allocation, TaskOutput, run_on_nodes
from clusterkit.slurmlaunch import SrunPlan, build_srun_line
from clusterkit.workloads.run import Cleanup, run_id_argument
from clusterkit.workloads.session import WorkloadContext
from clusterkit.workloads.ship import Shipped, _base_dir_shell, bundle_digest, bundle_zip

PLACED = "@@ck-workloads@@"


def ship_command(workdir: str | None, python: str | None) -> str:
    """Per node: the bundle's directory, unpacked from the inline zip when missing; prints ``PLACED path``."""
    q = shlex.quote
    blob = base64.b64encode(bundle_zip()).decode("ascii")
    fallback = f" || command -v {q(python)}" if python else ""
    return (f'd={_base_dir_shell(workdir)}; mkdir -p -m 700 "$d" || exit 3; '
            '[ -O "$d" ] || { echo "$d is not owned by $(id -un)" >&2; exit 4; }; '
            f'a="$d/workloads-{bundle_digest()}"; '
            'if [ ! -s "$a/workload_io.py" ] || [ ! -O "$a" ]; then '
            f'PY="$(command -v python3{fallback})" || {{ echo "no python3 on PATH" >&2; exit 127; }}; '
            't="$a.$SLURMD_NODENAME.$$"; z="$t.zip"; '
            f'echo {blob} | base64 -d > "$z" && "$PY" -m zipfile -e "$z" "$t" && rm -f "$z" '
            '&& chmod -R go-rwx "$t" && { mv -T "$t" "$a" 2>/dev/null || rm -rf "$t"; } || exit 5; fi; '
            f'echo {PLACED} "$a"')


def placed_at(result: HostResult[TaskOutput]) -> tuple[str | None, str | None]:
    """(the directory a node holds the bundle in, or None and why not) from its ship step."""
    output = result.value
    if not result.ok or output is None:
        return None, result.error
    for line in output.stdout:
        if line.startswith(PLACED):
            return line[len(PLACED):].strip(), None
    return None, " | ".join(output.stderr[-2:]) or f"exit {output.exit_code}"


def ship_over_slurm(alloc: Allocation, hosts: list[str], workdir: str | None, python: str | None,
                    timeout_s: float = 60.0) -> Shipped:
    """The bundle on every host through one srun step; the one directory they all hold it in."""
    results = run_on_nodes(alloc, ship_command(workdir, python), timeout_s, hosts)
    paths: dict[str, str] = {}
    failed: dict[str, str] = {}
    for host, result in results.items():
        path, why = placed_at(result)
        if path is None:
            failed[host] = why or "no answer"
        else:
            paths[host] = path
    if failed:
        detail = "; ".join(f"{h}: {why}" for h, why in failed.items())
        raise ClusterkitError(f"could not put the workload scripts on {len(failed)} node(s): {detail}")
    distinct = sorted(set(paths.values()))
    if len(distinct) > 1:
        where = ", ".join(f"{h}: {p}" for h, p in paths.items())
        raise ClusterkitError(f"the workload scripts landed at different paths ({where}); pass --workdir DIR "
                              "with a directory usable on every node")
    return Shipped(distinct[0], {h: HostResult(h, value=p) for h, p in paths.items()})


def slurm_cleanup(alloc: Allocation, hosts: list[str], timeout_s: float = 20.0) -> Cleanup:
    """Ends a stopped run's processes on ``hosts`` with one srun step (by its run id)."""

    def cleanup(run_id: str) -> dict[str, str]:
        results = run_on_nodes(alloc, kill_by_run_id_command(run_id), timeout_s, hosts)
        return {h: (" ".join(r.value.stdout).strip() if r.ok and r.value else f"clean-up failed: {r.error}")
                for h, r in results.items()}

    return cleanup


def first_address(host: str) -> str | None:
    """The rendezvous address: the first node's, as this machine resolves it (launch does the same)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


@dataclass
class SlurmWorkloadContext(WorkloadContext):
    """A :class:`WorkloadContext` whose launches go through srun in ``alloc``."""

    alloc: Allocation | None = None
    #: What every rank gets on top of this process's environment (PYTHONPATH, .deepspeed_env).
    exports: Mapping[str, str] = field(default_factory=dict)
    cpus_per_task: int | None = None

    @property
    def allocation(self) -> Allocation:
        if self.alloc is None:
            raise ClusterkitError("a Slurm workload context needs its allocation")
        return self.alloc

    @property
    def local(self) -> bool:
        return False  # every rank is a Slurm task, even on a one-node allocation

    def shipped(self) -> Shipped:
        if self._shipped is None:
            with self.console.status(f"workload scripts onto {len(self.names)} node(s) (one srun step)"):
                if self.shared_workdir:
                    from clusterkit.workloads.ship import ship

                    self._shipped = ship(self.names, self.settings, workdir=self.workdir, shared=True)
                else:
                    self._shipped = ship_over_slurm(self.allocation, self.names, self.workdir, self.python)
        return self._shipped

    def command_line(self, script_path: str, args: Sequence[str], chosen: Sequence[ActiveHost], run_id: str,
                     master_port: int | None = None) -> list[str]:
        plan = LaunchPlan(python=self.python, hostfile="", script=script_path,
                          script_args=[*args, run_id_argument(run_id)],
                          master_addr=self.master_addr or first_address(chosen[0].name),
                          master_port=master_port or self.master_port)
        alloc = self.allocation
        gpus = min((alloc.job.gpus_per_node.get(h.name, 0) for h in chosen), default=0)
        return build_srun_line(SrunPlan(plan, list(chosen), self.cwd, job_id=alloc.job_id,
                                        cpus_per_task=self.cpus_per_task, gpus_per_node=gpus,
                                        exports=self.exports, srun_args="--label --overlap"))

    def task_nodes(self, names: list[str]) -> list[str] | None:
        return list(names)

    def cleanup_for(self, names: list[str]) -> Cleanup:
        return slurm_cleanup(self.allocation, names)
