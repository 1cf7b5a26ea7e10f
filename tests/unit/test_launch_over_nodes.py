"""``clusterkit launch`` written once against ``Nodes``: the preflight's gate and the hand-over with a
stand-in for the nodes and the survey (milliseconds each), and the line each transport builds.

The launch on real sshd and slurmd nodes is proven in tests/cluster/test_launch.py and test_slurm*.py.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import clusterkit.commands.launch as launch_command
import clusterkit.launch as launch_library
from clusterkit.cli import main
from clusterkit.cluster import LaunchStyle, Target
from clusterkit.cluster.local import LocalNodes
from clusterkit.cluster.remote.slurm import Allocation
from clusterkit.cluster.remote.ssh import SshSettings
from clusterkit.cluster.slurm import SlurmNodes
from clusterkit.cluster.ssh import SshNodes
from clusterkit.core.launchline import LaunchPlan
from clusterkit.core.slurmlaunch import launch_intent, with_job_cpus
from clusterkit.node.facts import (
    ClusterProbes,
    ConnectProbe,
    MasterProbe,
    Maybe,
    NodeFacts,
    SlurmFacts,
    SlurmJobFacts,
    SlurmLaunchIntent,
    Unavailable,
)
from clusterkit.survey import AUTO_PORT, SurveyOptions
from tests.factories import healthy_gpu_node, make_host
from tests.fake_nodes import FakeNodes, hosts_named

REPO = Path(__file__).resolve().parents[2]
SMOKE = "clusterkit/workloads/scripts/zero_smoke.py"
HOSTS = hosts_named("node1", "node2", slots=8)


class Launched(BaseException):
    """Raised by the stand-in for exec: the process would have become the launch line here."""


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


@pytest.fixture
def hostfile(tmp_path: Path) -> Path:
    path = tmp_path / "hostfile"
    path.write_text("node1 slots=8\nnode2 slots=8\n")
    return path


@pytest.fixture
def python(tmp_path: Path) -> Path:
    """A training env whose `deepspeed` exists (nothing runs it: the hand-over is a stand-in)."""
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "deepspeed").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "deepspeed").chmod(0o755)
    return bin_dir / "python"


class Scripted:
    """The nodes a launch opens and what their survey finds, scripted; what the launch did, recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, nodes: FakeNodes) -> None:
        self.nodes = nodes
        self.facts: dict[str, Maybe[NodeFacts]] = {h.name: healthy_gpu_node(8, host=make_host(h.name))
                                                   for h in nodes.hosts}
        master = MasterProbe("node1", "10.0.0.11", ["10.0.0.11"], 29517, True,
                             {h.name: ConnectProbe(True) for h in nodes.hosts})
        self.probes = ClusterProbes(head="node1", clock_offset_s={h.name: 0.0 for h in nodes.hosts}, ssh_mesh={},
                                    master=master, launch_facts=self.facts["node1"])
        self.surveys: list[SurveyOptions] = []
        self.targets: list[Target] = []
        self.ran: list[tuple[list[str], bool]] = []
        monkeypatch.setattr(launch_command, "opened", self.opened)
        monkeypatch.setattr(launch_library, "survey_nodes", self.survey)
        monkeypatch.setattr(launch_command, "exec_launch", self.exec_launch)
        monkeypatch.setattr(launch_command, "run_launch", self.run_launch)

    @contextmanager
    def opened(self, target: Target) -> Iterator[FakeNodes]:
        self.targets.append(target)
        with self.nodes as nodes:
            yield nodes

    def survey(self, nodes: Any, options: SurveyOptions, progress: Any = None
               ) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
        self.surveys.append(options)
        return self.facts, self.probes

    def exec_launch(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.ran.append((list(argv), self.nodes.closed))
        raise Launched

    def run_launch(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.ran.append((list(argv), self.nodes.closed))
        return 7

    @property
    def lines_asked(self) -> list[Any]:
        return [call for call in self.nodes.calls if call.kind == "launch_line"]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, hostfile: Path) -> Scripted:
    return Scripted(monkeypatch, FakeNodes(HOSTS, hostfile=str(hostfile)))


def launch(hostfile: Path, python: Path, *flags: str, script: tuple[str, ...] = (SMOKE,)) -> int:
    return main(["launch", str(hostfile), "--python", str(python), *flags, "--", *script])


# ----------------------------------------------------------------------- the preflight's gate


def test_a_clean_preflight_launches_with_the_master_it_tested(scripted: Scripted, hostfile: Path, python: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert launch(hostfile, python, "--print-only") == 0
    out, err = capsys.readouterr()
    words = shlex.split(out)
    assert words[words.index("--master_addr") + 1] == "10.0.0.11"
    assert words[words.index("--master_port") + 1] == "29517"
    assert "0 errors" in err
    [options] = scripted.surveys
    assert (options.python, options.master_port, options.script) == (str(python), AUTO_PORT, SMOKE)
    assert [call.hosts for call in scripted.lines_asked] == [["node1", "node2"]]
    assert scripted.ran == [] and scripted.nodes.closed


def test_a_node_that_gave_no_facts_stops_the_launch_before_any_line(scripted: Scripted, hostfile: Path,
                                                                     python: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    scripted.facts["node2"] = Unavailable("node2 gave no answer within 30s")
    assert launch(hostfile, python) == 1
    out, err = capsys.readouterr()
    assert "node-unreachable" in err and "not launching" in err
    assert out == "" and scripted.lines_asked == [] and scripted.ran == []
    assert scripted.nodes.closed


def test_force_launches_despite_the_preflights_errors(scripted: Scripted, hostfile: Path, python: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    scripted.facts["node2"] = Unavailable("node2 refused the connection")
    with pytest.raises(Launched):
        launch(hostfile, python, "--force")
    assert "node-unreachable" in capsys.readouterr().err
    [(argv, closed)] = scripted.ran
    assert argv[-1] == SMOKE and not closed


def test_the_doctor_named_for_the_full_findings_looks_at_the_same_nodes(scripted: Scripted, hostfile: Path,
                                                                        python: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # The scripted nodes' pdsh has an info finding: shown a line, the doctor named for the rest.
    launch(hostfile, python, "--print-only", "--exclude", "node2")
    err = " ".join(capsys.readouterr().err.split())
    assert f"(clusterkit doctor {hostfile} --exclude node2 shows every finding with its fix)" in err


def test_a_line_that_holds_nothing_replaces_this_process(scripted: Scripted, hostfile: Path, python: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Launched):
        launch(hostfile, python)
    [(argv, closed_before)] = scripted.ran
    assert f"launching: {shlex.join(argv)}" in " ".join(capsys.readouterr().err.split())
    assert not closed_before


def test_a_line_run_inside_what_the_nodes_hold_runs_as_a_child_before_they_are_released(
        scripted: Scripted, hostfile: Path, python: Path) -> None:
    scripted.nodes.launch_while_open = True
    assert launch(hostfile, python) == 7  # the child's exit code
    [(_, closed_while_running)] = scripted.ran
    assert not closed_while_running and scripted.nodes.closed


def test_no_preflight_asks_the_nodes_for_nothing_but_the_line(scripted: Scripted, hostfile: Path, python: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert launch(hostfile, python, "--no-preflight", "--print-only") == 0
    assert scripted.surveys == []
    assert [call.kind for call in scripted.nodes.calls] == ["launch_line"]
    assert "--master_addr" not in shlex.split(capsys.readouterr().out)


def test_an_unknown_skip_id_is_refused_before_the_nodes_are_opened(scripted: Scripted, hostfile: Path,
                                                                   python: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert launch(hostfile, python, "--skip", "no-such-check") == 2
    assert "unknown check id or tag 'no-such-check'" in capsys.readouterr().err
    assert scripted.targets == []


def test_a_bad_checkpoint_interval_is_refused_before_the_nodes_are_opened(scripted: Scripted, hostfile: Path,
                                                                          python: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert launch(hostfile, python, "--checkpoint-every", "soon") == 2
    assert "--checkpoint-every: not a duration" in capsys.readouterr().err
    assert scripted.targets == []


# --------------------------------------------------------------------------- choosing the nodes


def test_a_launcher_that_cannot_start_ranks_over_ssh_is_refused(scripted: Scripted, hostfile: Path, python: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert launch(hostfile, python, "--launcher", "srun") == 2
    assert "--launcher srun over SSH: use pdsh (the default) or" in capsys.readouterr().err
    assert scripted.targets == []


def test_pdsh_inside_an_allocation_without_a_hostfile_is_refused_before_slurm_is_asked(
        scripted: Scripted, python: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert main(["launch", "--python", str(python), "--launcher", "pdsh", "--", SMOKE]) == 2
    assert "--launcher pdsh under Slurm: use srun (the default) or slurm" in capsys.readouterr().err
    assert scripted.targets == []


def test_a_launch_needs_a_hostfile_or_slurm(scripted: Scripted, python: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "--python", str(python), "--", SMOKE]) == 2
    assert "give a HOSTFILE, or launch inside a Slurm allocation" in capsys.readouterr().err


def test_the_launcher_given_reaches_the_line(scripted: Scripted, hostfile: Path, python: Path) -> None:
    launch(hostfile, python, "--no-preflight", "--print-only", "--launcher", "OpenMPI")
    [call] = scripted.lines_asked
    assert call.detail.launcher == "openmpi"


# ------------------------------------------------------------------- what the launch asks of Slurm


def job(cpus: dict[str, int], gpus: int = 0) -> SlurmJobFacts:
    return SlurmJobFacts("42", "batch", list(cpus), None, None, None,
                         gpus_per_node={n: gpus for n in cpus} if gpus else {}, cpus_per_node=cpus)


def test_the_slurm_checks_weigh_the_cpus_the_srun_line_asks_for(scripted: Scripted, python: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    scripted.probes.slurm = SlurmFacts("22.05.8", job({"node1": 16, "node2": 12}), [])
    main(["launch", "--python", str(python), "--print-only", "--", SMOKE, "--dataloader_num_workers", "2"])
    assert isinstance(scripted.probes.slurm, SlurmFacts)
    intent = scripted.probes.slurm.launch
    assert intent is not None
    assert (intent.ranks_per_node, intent.cpus_per_node_task, intent.dataloader_workers) == (8, 12, 2)


def test_cpus_given_are_weighed_as_given_and_deepspeeds_slurm_launcher_asks_for_none() -> None:
    given = launch_intent("srun", HOSTS, 4, [], None)
    assert with_job_cpus(given, job({"node1": 16, "node2": 16}), HOSTS).cpus_per_node_task == 4
    theirs = launch_intent("slurm", HOSTS, 4, ["--save_strategy", "no"], "2h")
    assert theirs.cpus_per_node_task is None
    assert (theirs.no_checkpoints, theirs.checkpoint_source) == (True, "--save_strategy no")


def test_without_a_scheduler_the_intent_is_left_aside() -> None:
    probes = ClusterProbes(head="node1", clock_offset_s={}, ssh_mesh={}, master=Unavailable("not probed"))
    launch_library.weigh_intent(probes, SlurmLaunchIntent("srun", 8, None), HOSTS)
    assert isinstance(probes.slurm, Unavailable)


# ----------------------------------------------------------------------- the line per transport


def plan(**changes: Any) -> LaunchPlan:
    values: dict[str, Any] = {"python": "/env/bin/python", "hostfile": "", "script": "train.py",
                              "script_args": ["--steps", "2"]}
    values.update(changes)
    return LaunchPlan(**values)


def slurm_nodes(tmp_path: Path, *, owned: bool = False, cpus: dict[str, int] | None = None,
                names: tuple[str, ...] = ("node1", "node2")) -> SlurmNodes:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    held = job(cpus or {n: 4 for n in names}, gpus=2)
    return SlurmNodes(Allocation(held, owned=owned), environ={"HOME": str(home), "PYTHONPATH": "/lib"})


def test_the_srun_line_asks_for_the_fewest_cpus_the_job_holds_unless_told(tmp_path: Path) -> None:
    nodes = slurm_nodes(tmp_path, cpus={"node1": 16, "node2": 12})
    line = nodes.launch_line(plan(master_addr="10.0.0.11"), nodes.hosts, LaunchStyle(labelled=False, cwd="/repo"))
    assert "--cpus-per-task=12" in line.argv and "--gres=gpu:2" in line.argv and "--label" not in line.argv
    told = nodes.launch_line(plan(master_addr="10.0.0.11"), nodes.hosts, LaunchStyle(cpus_per_task=3, cwd="/r"))
    assert "--cpus-per-task=3" in told.argv


def test_the_srun_line_exports_what_deepspeeds_runner_would(tmp_path: Path) -> None:
    nodes = slurm_nodes(tmp_path)
    (tmp_path / "home" / ".deepspeed_env").write_text("NCCL_SOCKET_IFNAME=eth0\nA=home\n")
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / ".deepspeed_env").write_text("A=job\n")
    line = nodes.launch_line(plan(master_addr="m"), nodes.hosts, LaunchStyle(cwd=str(job_dir), exports={"B": "1"}))
    start = line.argv.index("env") + 1
    exports = line.argv[start:line.argv.index("/bin/sh")]
    assert exports == [f"PYTHONPATH={job_dir}:/lib", "NCCL_SOCKET_IFNAME=eth0", "A=job", "B=1"]


def test_the_srun_line_names_a_master_when_the_preflight_chose_none(tmp_path: Path) -> None:
    nodes = SlurmNodes(Allocation(job({"localhost": 1, "node2": 1})), environ={"HOME": str(tmp_path)})
    line = nodes.launch_line(plan(), nodes.hosts, LaunchStyle(cwd="/repo"))
    assert "--master_addr=127.0.0.1" in line.argv and "--master_port=29500" in line.argv


def test_a_printed_line_names_no_allocation_that_clusterkit_releases(tmp_path: Path) -> None:
    style = LaunchStyle(cwd="/repo", outlives_nodes=True)
    ours = slurm_nodes(tmp_path, owned=True)
    printed = ours.launch_line(plan(master_addr="m"), ours.hosts, style)
    assert not any(word.startswith("--jobid") for word in printed.argv)
    run_now = ours.launch_line(plan(master_addr="m"), ours.hosts, LaunchStyle(cwd="/repo"))
    assert "--jobid=42" in run_now.argv and run_now.while_open
    theirs = slurm_nodes(tmp_path)
    kept = theirs.launch_line(plan(master_addr="m"), theirs.hosts, style)
    assert "--jobid=42" in kept.argv and not kept.while_open
    assert theirs.hostfile == "slurm job 42"  # what the preflight's report names


def test_deepspeeds_own_slurm_launcher_reads_a_hostfile_of_the_allocation(tmp_path: Path) -> None:
    nodes = slurm_nodes(tmp_path, names=("node1", "node2", "node3"))
    line = nodes.launch_line(plan(launcher="slurm", master_addr="10.0.0.11", master_port=29501), nodes.hosts[1:],
                             LaunchStyle(cwd="/repo"))
    words = line.argv
    assert words[0] == "/env/bin/deepspeed" and words[words.index("--launcher") + 1] == "slurm"
    assert words[words.index("--include") + 1] == "node2:0,1@node3:0,1"
    assert "--no_ssh_check" in words and words[-3:] == ["train.py", "--steps", "2"]
    written = Path(words[words.index("--hostfile") + 1]).read_text().splitlines()
    assert written[1:] == ["node1 slots=2", "node2 slots=2", "node3 slots=2"]


def test_deepspeeds_own_slurm_launcher_is_run_with_the_exports_its_srun_passes_on(tmp_path: Path) -> None:
    nodes = slurm_nodes(tmp_path, names=("node1", "node2"))
    line = nodes.launch_line(plan(launcher="slurm", master_addr="m"), nodes.hosts,
                             LaunchStyle(cwd="/repo", exports={"PYTHONPATH": "/repo:/tmp/hook"}))
    assert line.env == {"PYTHONPATH": "/repo:/tmp/hook"}


def test_the_ssh_line_keeps_the_launcher_asked_for_and_the_ssh_port() -> None:
    nodes = SshNodes(HOSTS, SshSettings(port=2222), hostfile="/h")
    line = nodes.launch_line(plan(launcher="openmpi"), HOSTS, LaunchStyle()).argv
    assert line[line.index("--launcher") + 1] == "openmpi" and line[line.index("--ssh_port") + 1] == "2222"


def test_this_machine_picked_out_of_a_larger_hostfile_keeps_its_include() -> None:
    [here, other] = hosts_named("localhost", "node2", slots=4)
    chosen = here.__class__(here.name, (0, 1), here.entry)
    nodes = LocalNodes(chosen, hostfile="/h", whole=[here, other])
    line = nodes.launch_line(plan(), nodes.hosts, LaunchStyle()).argv
    assert line[line.index("--include") + 1] == "localhost:0,1" and "--no_ssh_check" in line
    alone = LocalNodes(here, hostfile="/h")
    assert "--include" not in alone.launch_line(plan(), alone.hosts, LaunchStyle()).argv


def test_the_users_include_and_exclude_are_kept_for_the_hosts_they_chose_and_exact_slots_otherwise() -> None:
    whole = hosts_named("node1", "node2", "node3", slots=8)
    nodes = SshNodes(whole[1:], SshSettings(), hostfile="/h", whole=whole)
    theirs = nodes.launch_line(plan(exclude="node1"), nodes.hosts, LaunchStyle()).argv
    assert theirs[theirs.index("--exclude") + 1] == "node1" and "--include" not in theirs
    pair = nodes.launch_line(plan(exclude="node1"), whole[2:], LaunchStyle()).argv
    assert pair[pair.index("--include") + 1] == "node3:" + ",".join(str(s) for s in range(8))
    assert "--exclude" not in pair
