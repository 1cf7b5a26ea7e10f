"""A comparison as findings, readable at 64 nodes: identical changes grouped by host list, the surprising
ones first.

``node[01-62]: driver 550.54 -> 560.28; node[63-64]: unchanged``. A change is surprising when some
compared nodes have it and others do not (or have another): a driver updated everywhere is news, a
driver updated on two nodes of sixty-four is the likely cause. Then counters that grew, hardware,
figures that fell, software, each by label.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, Severity
from clusterkit.core.hostlist import compress, expand
from clusterkit.core.run_diff import COUNTER, FIGURE, HARDWARE, NOT_MEASURED, SOFTWARE, Change, Comparison

CHECK_IDS = {SOFTWARE: "changed-software", HARDWARE: "changed-hardware", COUNTER: "counter-grew",
             FIGURE: "figure-fell"}
HOSTS_CHANGED, NOTHING_CHANGED, NOTHING_COMPARED = "hosts-changed", "nothing-changed", "nothing-compared"
_RANK = {COUNTER: 0, HARDWARE: 1, FIGURE: 2, SOFTWARE: 3}
_WHY = {
    SOFTWARE: "a version or setting that moved since the run compared against is the first suspect when "
              "that run worked and this one does not; one that moved on some nodes only splits the cluster",
    HARDWARE: "a GPU swapped, a link retrained narrower or slower, a port or interface down: the node "
              "runs, slower or not at all, and nothing else says it changed",
    COUNTER: "error counters that grew since the run compared against mean the hardware degraded since",
    FIGURE: "a figure that fell beyond the run-to-run noise means this run is slower than the one "
            "compared against, on this subject",
}
_FIX = {
    SOFTWARE: "align the version or setting on every node (clusterkit env push, edit ~/.deepspeed_env), "
              "or mark this run as the new baseline: clusterkit history mark good",
    HARDWARE: "reseat or replace the part, bring the link or port back up; nvidia-smi -q and ibstat show "
              "it on the node",
    COUNTER: "look at the node's GPU (nvidia-smi -q -d ECC,ROW_REMAPPER, the kernel log for Xid) and drain "
             "it if the counters keep growing",
    FIGURE: "clusterkit bench find-slow HOSTFILE names the slow node or link; rerun to rule out noise",
}


def _hosts(names: Sequence[str]) -> str:
    """A host list, compressed where the names are plain host names (not pairs already written as lists)."""
    if any(c in name for name in names for c in "[],"):
        return "; ".join(names)
    return compress(names)


def _finding(kind: str, host: str, where: str, message: str, severity: Severity) -> Finding:
    return Finding(CHECK_IDS[kind], severity, Outcome.FAIL, host, where, message, _WHY[kind], _FIX[kind])


def comparison_findings(comparison: Comparison, against: str) -> list[Finding]:
    """Findings for every change (grouped), hosts added or dropped, and one pass when nothing changed."""
    ranked: list[tuple[bool, int, str, Finding]] = []
    ranked += _fact_groups(comparison)
    ranked += _figure_groups(comparison)
    ranked.sort(key=lambda item: (not item[0], item[1], item[2]))
    findings = [item[3] for item in ranked]
    info = "host list changed since the run compared against; those hosts are not compared"
    if comparison.added:
        findings.append(Finding(HOSTS_CHANGED, Severity.INFO, Outcome.FAIL, _hosts(comparison.added), "",
                                f"not in {against}", info, "compare against a run of the same hosts"))
    if comparison.removed:
        findings.append(Finding(HOSTS_CHANGED, Severity.INFO, Outcome.FAIL, _hosts(comparison.removed), "",
                                f"in {against}, not in this run", info, "compare against a run of the same hosts"))
    for host, why in comparison.not_compared.items():
        findings.append(Finding(HOSTS_CHANGED, Severity.INFO, Outcome.FAIL, host, "", f"not compared: {why}",
                                "a node without facts cannot be compared", "rerun once the node answers"))
    compared = len(comparison.fact_hosts)
    figures = sum(len(s) for s in comparison.figure_subjects.values())
    saved, now = comparison.figure_counts
    figures_changed = any(c.kind == FIGURE for c in comparison.changes)
    if not figures and not figures_changed and (any(comparison.figure_counts) or not compared):
        what = "no figure" if compared else "no node's facts and no figure"
        findings.append(Finding(
            NOTHING_COMPARED, Severity.WARNING, Outcome.FAIL, CLUSTER_HOST, "",
            f"nothing compared with {against}: {what} in both runs (figures: {saved} saved, {now} in this run)",
            "a comparison of nothing is no evidence that nothing changed",
            "a run without figures measured nothing (its findings say why): rerun it; compare runs of the same "
            "workload, sizes and hosts"))
    if not findings:
        findings.append(Finding(NOTHING_CHANGED, Severity.INFO, Outcome.PASS, CLUSTER_HOST, "",
                                f"nothing changed since {against} ({compared} node(s), {figures} figure(s) "
                                "compared)", "", ""))
    return findings


def _fact_groups(comparison: Comparison) -> list[tuple[bool, int, str, Finding]]:
    by_label: dict[tuple[str, str], dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for change in comparison.changes:
        if change.kind != FIGURE:
            by_label[(change.kind, change.label)][(change.before, change.after)].append(change.host)
    ranked = []
    for (kind, label), groups in by_label.items():
        changed = {host for hosts in groups.values() for host in hosts}
        unchanged = [h for h in comparison.fact_hosts if h not in changed]
        surprising = bool(unchanged) or len(groups) > 1
        tail = f"; {_hosts(unchanged)}: unchanged" if unchanged else ""
        for (before, after), hosts in sorted(groups.items(), key=lambda item: -len(item[1])):
            verb = "grew" if kind == COUNTER else "changed"
            message = f"{label} {verb}: {before} -> {after}{tail}"
            severity = Severity.INFO if kind == SOFTWARE and not surprising else Severity.WARNING
            ranked.append((surprising, _RANK[kind], label, _finding(kind, _hosts(hosts), label, message, severity)))
    return ranked


def _figure_groups(comparison: Comparison) -> list[tuple[bool, int, str, Finding]]:
    by_metric: dict[str, list[Change]] = defaultdict(list)
    for change in comparison.changes:
        if change.kind == FIGURE:
            by_metric[change.label].append(change)
    ranked = []
    for metric, changes in by_metric.items():
        subjects = [c.host for c in changes]
        held = [s for s in comparison.figure_subjects.get(metric, []) if s not in subjects]
        surprising = bool(held)
        if len(changes) == 1:
            (c,) = changes
            detail = f"{c.before} -> {c.after}" + ("" if c.not_measured else f" ({c.fell_by:.0%} lower)")
        else:
            shares = sorted(c.fell_by for c in changes if not c.not_measured)
            lost_count = len(changes) - len(shares)
            parts = [f"{shares[0]:.0%}-{shares[-1]:.0%} lower on {len(shares)}"] if shares else []
            parts += [f"{NOT_MEASURED} on {lost_count}"] if lost_count else []
            detail = f"{', '.join(parts)} of {len(changes) + len(held)}"
        message = f"{metric} fell: {detail}"
        host = _hosts(subjects)
        suspects = _common_node(subjects, held)
        if suspects:
            message += f" on {host}; {compress(suspects)} is in every one that fell and in none that held"
            host = compress(suspects)
        elif held:
            message += f"; {_hosts(held)}: held"
        ranked.append((surprising, _RANK[FIGURE], metric, _finding(FIGURE, host, metric, message, Severity.WARNING)))
    return ranked


def _common_node(fell: Sequence[str], held: Sequence[str]) -> list[str]:
    """For figures of groups of nodes (pairs): the nodes in every group that fell and in none that held."""
    groups = [expand(subject) for subject in fell]
    if not groups or all(len(g) < 2 for g in groups) or not held:
        return []
    common = set.intersection(*(set(g) for g in groups))
    held_nodes = {node for subject in held for node in expand(subject)}
    return sorted(common - held_nodes)
