"""Findings from the dumps: a hang and its culprit, a frozen node, a silent node, ranks py-spy may not
read, a straggler. Pure functions over :mod:`clusterkit.stacks.model`.

A hang is judged only from two dumps or more: every rank read in both is where it was (the same main
thread frames), and, where the ranks were sampled (``--sample``), none was seen moving meanwhile (two
dumps can catch a slow rank at the same line twice; its samples cannot). Idleness is no signal (a rank
in an NCCL collective keeps its GPU and a CPU thread busy); not moving is. Then the ranks in the
biggest group inside a collective are the ones waiting, and every other place is a culprit, named by
what it is doing: a different collective (desync), its DataLoader, a lock, or any other line.
"""

from __future__ import annotations

from collections.abc import Sequence

from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, Severity
from clusterkit.core.hostlist import compress
from clusterkit.stacks.group import Group, group_ranks, rank_list, ranks_text, unchanged
from clusterkit.stacks.model import RankStack, Round
from clusterkit.stacks.sample import find_stragglers, moved_while_sampled, time_share

HANG_WHY = ("a rank that does not reach the collective its peers wait in stops the whole job; the others "
            "wait until NCCL's watchdog fires (30 minutes by default), when the evidence is gone")
PTRACE_FIX = ("let this user read the ranks: sudo sysctl kernel.yama.ptrace_scope=0 (Yama's 1, Ubuntu's "
              "default, lets a user read only its own descendants, and ranks started by pdsh or srun never "
              "are), or give py-spy CAP_SYS_PTRACE (sudo setcap cap_sys_ptrace+ep PY-SPY), or run as root or "
              "as the ranks' user; without those rights, launch with clusterkit launch: its ranks write their "
              "own stacks on a signal (read with --via signal)")


def _fail(check: str, severity: Severity, host: str, where: str, message: str, why: str, fix: str) -> Finding:
    return Finding(check, severity, Outcome.FAIL, host, where, message, why, fix)


def _host_of(ranks: Sequence[RankStack]) -> str:
    hosts = {r.host for r in ranks}
    return next(iter(hosts)) if len(hosts) == 1 else CLUSTER_HOST


def silent_nodes(rounds: Sequence[Round]) -> list[Finding]:
    out = []
    for node in rounds[-1].silent:
        out.append(_fail("stacks-node-silent", Severity.ERROR, node.host, "",
                         f"{node.host} did not answer: {node.error}; its ranks' stacks are not shown",
                         "a node that does not answer may be frozen or down, and its ranks with it",
                         node.fix or f"check {node.host} (ssh {node.host} uptime); a node that hangs is drained "
                         "and the job restarted without it"))
    return out


def stopped_ranks(last: Round) -> list[Finding]:
    """Per node: its ranks in state T (a frozen node when all of them are)."""
    out = []
    for node in last.nodes:
        stopped = [r for r in node.ranks if r.stopped]
        if not stopped:
            continue
        whole = len(stopped) == len(node.ranks)
        pids = " ".join(str(r.pid) for r in stopped)
        what = (f"every rank on {node.host} ({ranks_text(stopped)}) is stopped (state T)" if whole
                else f"{ranks_text(stopped)} stopped (state T)")
        out.append(_fail("rank-stopped", Severity.ERROR, node.host, f"pid {pids}",
                         f"{what}: {'the node is frozen' if whole else 'SIGSTOPped or held by a debugger'}; "
                         "its peers wait for it in their next collective",
                         "a stopped rank never reaches the next collective: every other rank waits for it",
                         f"if {node.host} froze (hardware, a hung kernel), drain it (scontrol update "
                         f"nodename={node.host} state=drain reason=frozen) and restart the job from its last "
                         f"checkpoint without it; if a person or a debugger stopped them: kill -CONT {pids}"))
    return out


def denied_ranks(last: Round) -> list[Finding]:
    out = []
    for node in last.nodes:
        refused = [r for r in node.ranks if r.denied or r.fallback_from]
        if not refused:
            continue
        unread = [r for r in refused if r.main is None]
        scope = f" (kernel.yama.ptrace_scope={node.ptrace_scope})" if node.ptrace_scope else ""
        got = ("; read instead through the stack hook clusterkit launch put in them" if not unread
               else f"; {ranks_text(unread)} not read at all (no stack hook: not started by clusterkit launch)")
        out.append(_fail("stacks-ptrace-denied", Severity.WARNING if not unread else Severity.ERROR, node.host,
                         "", f"py-spy may not read {ranks_text(refused)}{scope}{got}",
                         "reading another process's memory needs ptrace rights over it", PTRACE_FIX))
    return out


def unread_ranks(last: Round) -> list[Finding]:
    """Ranks read neither way for another reason than a stop or a refusal (those have findings of their own)."""
    out = []
    for node in last.nodes:
        unread = [r for r in node.ranks if r.main is None and not r.stopped and not r.denied]
        if unread:
            reasons = "; ".join(sorted({r.error or "no stack" for r in unread}))
            out.append(_fail("stacks-unread", Severity.WARNING, node.host, "",
                             f"{ranks_text(unread)} could not be read: {reasons}",
                             "a rank whose stack is not known may be the one the others wait for",
                             f"look at it by hand on {node.host}: py-spy dump --pid "
                             + " ".join(str(r.pid) for r in unread)))
    return out


def missing_ranks(last: Round) -> list[Finding]:
    ranks = last.ranks
    worlds = {r.world for r in ranks if r.world}
    if len(worlds) != 1 or last.silent:
        return []
    world = worlds.pop()
    missing = sorted(set(range(world)) - {r.rank for r in ranks})
    if not missing:
        return []
    return [_fail("ranks-missing", Severity.ERROR, CLUSTER_HOST, "",
                  f"ranks {rank_list(missing)} of the job's {world} were found on no node asked (found "
                  f"{len(ranks)} on {compress(r.host for r in ranks)})",
                  "the job waits for ranks that are not running where they were looked for",
                  "look for those ranks on nodes outside the hostfile, or for their exit in the job's log")]


def waiting_group(groups: Sequence[Group]) -> Group | None:
    """The ranks that wait: the biggest group inside a collective (else the biggest)."""
    readable = [g for g in groups if g.place is not None]
    if not readable:
        return None
    in_collective = [g for g in readable if g.place and g.place.kind == "collective"]
    return max(in_collective or readable, key=lambda g: (len(g.ranks), -g.ranks[0].rank))


def culprit(group: Group, waiting: Group, seconds: float) -> Finding:
    """One group that is not where the waiting ranks are, named by what it does."""
    assert group.place is not None and waiting.place is not None
    place, host = group.place, _host_of(group.ranks)
    they = f"while {ranks_text(waiting.ranks)} wait {waiting.place.describe()}"
    still = f"(unchanged for {seconds:.0f}s)" if seconds >= 1 else "(unchanged between dumps)"
    where = place.site.place if place.site else ""
    if place.kind == "collective":
        return _fail("hang-desync", Severity.ERROR, host, where,
                     f"{group.describe()} {they} {still}: the ranks called different collectives (a rank skipped "
                     "or added one)", HANG_WHY,
                     "look for a collective behind a rank-dependent branch or an early exit from a loop "
                     f"({where}); every rank must call the same collectives in the same order")
    if place.kind == "dataloader":
        return _fail("hang-dataloader", Severity.ERROR, host, where,
                     f"{group.describe()} {they} {still}: its DataLoader gives no batch", HANG_WHY,
                     "look at the rank's dataloader workers (py-spy dump --pid on the rank's child processes): a "
                     "worker stuck on I/O or dead; DataLoader(timeout=...) turns this into an error")
    if place.kind == "lock":
        return _fail("hang-lock", Severity.ERROR, host, where,
                     f"{group.describe()} {they} {still}: it waits on a lock no thread releases", HANG_WHY,
                     "see which thread of that rank holds the lock (clusterkit stacks --json lists every thread): "
                     "a deadlock between threads, or a lock taken twice")
    return _fail("hang-elsewhere", Severity.ERROR, host, where,
                 f"{group.describe()} {they} {still}: they wait for it", HANG_WHY,
                 f"look at what {where} waits for on {host}; the other ranks are blocked until it reaches the "
                 "collective")


def hang(rounds: Sequence[Round]) -> list[Finding]:
    """Culprits of a hang: only where every rank read in the last two dumps stayed where it was."""
    if len(rounds) < 2:
        return []
    before, last = rounds[-2], rounds[-1]
    readable = [r for r in last.ranks if r.main is not None and not r.stopped]
    if not readable or len(unchanged(before.ranks, last.ranks)) != len(readable) or \
            any(moved_while_sampled(r) for r in readable):
        return []
    seconds = last.started_at - before.started_at
    groups = group_ranks(last.ranks)
    waiting = waiting_group(groups)
    if waiting is None:
        return []
    found = [culprit(g, waiting, seconds) for g in groups if g.place is not None and g is not waiting]
    if not found and not any(r.stopped for r in last.ranks) and not missing_ranks(last) and waiting.place and \
            waiting.place.kind == "collective" and len(waiting.ranks) == len(last.ranks):
        found.append(_fail("hang-all-waiting", Severity.WARNING, CLUSTER_HOST, "",
                           f"{waiting.describe()}, unchanged for {seconds:.0f}s: every rank found waits, so the one "
                           "they wait for is not among them (another node, a dead rank)", HANG_WHY,
                           "check that every rank of the job is on the nodes asked, and the job's log for one that "
                           "exited"))
    return found


def stragglers(last: Round) -> list[Finding]:
    shares = [s for r in last.ranks if (s := time_share(r)) is not None]
    out = []
    for share, typical in find_stragglers(shares):
        rank = share.rank
        hot = ", ".join(f"`{f.name}` {f.place} {pct:.0%}" for f, pct in share.hottest)
        out.append(_fail("rank-straggler", Severity.WARNING, rank.host, share.hottest[0][0].place if share.hottest
                         else "", f"{rank.label} is the straggler: its peers spend {typical:.0%} of their time "
                         f"waiting in collectives, it spends {share.waiting:.0%}; its time goes to {hot or '?'}",
                         "every step waits for the slowest rank: the whole job runs at its pace",
                         "look at what those frames do on that rank (its data, its CPU, its node: clusterkit bench "
                         "find-slow compares the nodes)"))
    return out


def judge_rounds(rounds: Sequence[Round]) -> list[Finding]:
    """Every finding of the dumps, gravest kinds first."""
    last = rounds[-1]
    hung = hang(rounds)
    # A hung rank's samples say only what its stack says: a straggler is judged in a job that moves.
    return [*silent_nodes(rounds), *stopped_ranks(last), *hung, *missing_ranks(last), *denied_ranks(last),
            *unread_ranks(last), *([] if hung else stragglers(last))]
