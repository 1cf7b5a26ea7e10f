"""Taking every rank's stack on every node, through whatever :class:`~clusterkit.cluster.Nodes` reach
them: py-spy put in the nodes' cache where it is missing, then the agent's ``stacks`` on every node at
once, once per dump; a node that does not answer in time is a value of the result, never a wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from clusterkit.cluster import GroupResult, Nodes
from clusterkit.cluster.remote.agent import AgentReply
from clusterkit.stacks.model import NodeDump, Round, node_of
from clusterkit.stacks.ship import head_pyspy, place, pyspy_file

#: What the agent needs beyond the dump's own deadline: its start over SSH or srun, its reply.
AGENT_SLACK_S = 10.0
#: The longest the rank's own handler is waited for (as the node waits, see pystacks.SIGNAL_WAIT_S).
SIGNAL_WAIT_S = 2.0
VIAS = ("auto", "py-spy", "signal")


@dataclass(frozen=True)
class StacksOptions:
    """How the stacks are taken."""

    #: ``auto`` (py-spy, the launch hook's signal where py-spy may not read a rank), ``py-spy``, ``signal``.
    via: str = "auto"
    native: bool = False
    #: py-spy never stops the ranks (its stacks may then be torn in a rank that runs).
    nonblocking: bool = False
    #: Per rank, per dump.
    timeout_s: float = 10.0
    #: Dumps taken; two or more tell a hang (nothing moved) from a job that runs.
    dumps: int = 2
    #: Seconds from one dump's start to the next's.
    every_s: float = 2.0
    #: Seconds of ``py-spy record`` per rank in the last dump (0: none): where each rank spends its time.
    sample_s: float = 0.0
    rate: int = 50


@dataclass
class Taken:
    """The dumps, and what placing py-spy said per host where it failed."""

    rounds: list[Round]
    pyspy_errors: dict[str, str]


def agent_args(options: StacksOptions, last: bool) -> list[str]:
    args = ["stacks", "--via", options.via, "--timeout", f"{options.timeout_s:g}"]
    if options.native:
        args.append("--native")
    if options.nonblocking:
        args.append("--nonblocking")
    if last and options.sample_s > 0:
        args += ["--sample", f"{options.sample_s:g}", "--rate", str(options.rate)]
    return args


def placed_pyspy(nodes: Nodes, timeout_s: float) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``--py-spy PATH`` per host where this machine's py-spy is now in the node's cache, and why not
    elsewhere (those nodes use a py-spy on their own PATH, if any)."""
    binary = head_pyspy()
    if binary is None:
        return {}, {}
    cached = pyspy_file(binary)
    placed = place(nodes, [cached], timeout_s)
    args = {h: ["--py-spy", paths[cached.name]] for h, paths in placed.succeeded.items()}
    return args, {h: r.error or "no copy" for h, r in placed.failed.items()}


def round_of(replies: GroupResult[AgentReply], started_at: float, seconds: float) -> Round:
    nodes = []
    for host, result in replies.items():
        if result.ok and result.value is not None and isinstance(result.value.result, dict):
            nodes.append(node_of(host, result.value.result))
        else:
            nodes.append(NodeDump(host, error=result.error or "no answer", fix=result.fix or ""))
    return Round(nodes, started_at, seconds)


def take_stacks(nodes: Nodes, options: StacksOptions, *, place_timeout_s: float = 60.0,
                on_round: Callable[[Round], None] | None = None,
                sleep: Callable[[float], None] = time.sleep) -> Taken:
    """``options.dumps`` dumps of every rank on every node, ``options.every_s`` apart."""
    per_host, errors = ({}, {}) if options.via == "signal" else placed_pyspy(nodes, place_timeout_s)
    rounds: list[Round] = []
    for index in range(options.dumps):
        last = index == options.dumps - 1
        budget = options.timeout_s + SIGNAL_WAIT_S + AGENT_SLACK_S + (options.sample_s if last else 0.0)
        started, clock = time.time(), time.monotonic()
        replies = nodes.run_agent(agent_args(options, last), budget, per_host_args=per_host)
        rounds.append(round_of(replies, started, time.monotonic() - clock))
        if on_round is not None:
            on_round(rounds[-1])
        if not last:
            sleep(max(0.0, options.every_s - (time.monotonic() - clock)))
    return Taken(rounds, errors)
