"""What a command works on, built once from its arguments: the hosts and how to reach them.

Below ``commands/`` nothing sees argparse's Namespace: a command turns its flags into a :class:`Target`
(``clusterkit.commands.flags.target_from_args``), then opens it (:func:`clusterkit.cluster.open_nodes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from clusterkit.cluster.remote.ssh import SshSettings
from clusterkit.core.inventory import ActiveHost, HostEntry, load_hostfile, select_hosts
from clusterkit.core.launchline import DEEPSPEED_LAUNCHERS
from clusterkit.core.launchsite import launch_place
from clusterkit.core.slurmlaunch import SLURM_LAUNCHERS
from clusterkit.core.slurmrequest import SlurmRequest


@dataclass(frozen=True)
class SshReach:
    """Over SSH (Fabric/paramiko for commands, OpenSSH for pdsh and relay hops)."""

    settings: SshSettings = field(default_factory=SshSettings)
    #: ``launch --launcher`` values that start ranks this way (the first is the default), and how to say it.
    launchers: ClassVar[tuple[str, ...]] = DEEPSPEED_LAUNCHERS
    how: ClassVar[str] = "over SSH"


@dataclass(frozen=True)
class SlurmReach:
    """Through srun/sbcast in an allocation: the one this process runs in (``job_id`` None and no
    ``request``), a running job by id, or a new one asked of salloc with ``request`` (released after)."""

    request: SlurmRequest | None = None
    job_id: str | None = None
    #: A directory every node sees, where the agent is unpacked once instead of broadcast.
    agent_dir: str | None = None
    #: clusterkit's srun line (the default), or DeepSpeed's own Slurm launcher.
    launchers: ClassVar[tuple[str, ...]] = SLURM_LAUNCHERS
    how: ClassVar[str] = "under Slurm"


@dataclass(frozen=True)
class LocalReach:
    """This machine only, in-process and by subprocess: no SSH, no scheduler."""

    #: DeepSpeed's runner starts one local host's ranks itself, whichever launcher it is given.
    launchers: ClassVar[tuple[str, ...]] = DEEPSPEED_LAUNCHERS
    how: ClassVar[str] = "on this machine"


Reach = SshReach | SlurmReach | LocalReach


@dataclass(frozen=True)
class Target:
    """The hosts a command works on, their order and slots, and how to reach them.

    ``hosts`` is empty for a Slurm allocation still to be asked for: the allocation names them when the
    target is opened.
    """

    hosts: list[ActiveHost]
    reach: Reach
    #: The hostfile the hosts came from ("" when Slurm or this machine chose them).
    hostfile: str = ""
    #: Every host and slot of the hostfile before --include/--exclude (empty: the same as ``hosts``).
    whole: list[ActiveHost] = field(default_factory=list)
    #: The DeepSpeed --include/--exclude that chose ``hosts`` (launch lines carry them on).
    include: str = ""
    exclude: str = ""

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def every_host(self) -> list[ActiveHost]:
        return self.whole or self.hosts

    @property
    def only_this_machine(self) -> bool:
        """This machine alone, named by no hostfile (it has no slots of its own to report)."""
        return isinstance(self.reach, LocalReach) and not self.hostfile


def hostfile_target(hostfile: str, settings: SshSettings, *, include: str = "", exclude: str = "") -> Target:
    """The hostfile's hosts after --include/--exclude; this machine alone (the hostfile naming only it)
    is reached without SSH, as DeepSpeed's runner does."""
    parsed = load_hostfile(hostfile)
    hosts = select_hosts(parsed, include, exclude)
    whole = select_hosts(parsed)
    place = launch_place([h.name for h in hosts])
    reach: Reach = LocalReach() if place.local_only else SshReach(settings)
    return Target(hosts=hosts, reach=reach, hostfile=hostfile, whole=whole, include=include, exclude=exclude)


def allocation_target(request: SlurmRequest | None = None, job_id: str | None = None, *, include: str = "",
                      exclude: str = "", agent_dir: str | None = None) -> Target:
    """A Slurm allocation's nodes (less --exclude, or only --include): this one, job ``job_id``, or a new
    one from ``request``."""
    return Target(hosts=[], reach=SlurmReach(request=request, job_id=job_id, agent_dir=agent_dir),
                  include=include, exclude=exclude)


def this_machine(slots: int = 1) -> Target:
    """This machine alone, with ``slots`` ranks."""
    name = launch_place([]).name
    return Target(hosts=[ActiveHost(name, tuple(range(slots)), HostEntry(name, slots, 0))], reach=LocalReach())
