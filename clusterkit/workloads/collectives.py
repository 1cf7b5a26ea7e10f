"""The collectives bench from the head: run it, judge it against the topology, draw it, find the slow node."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, Severity
from clusterkit.core.inventory import ActiveHost
from clusterkit.workloads.expect import Expectation
from clusterkit.workloads.plot import busbw_series, save_png
from clusterkit.workloads.run import RunOutcome
from clusterkit.workloads.scripts import nccl_format as fmt
from clusterkit.workloads.session import WorkloadContext, WorkloadRun
from clusterkit.workloads.slownode import PairResult, SearchResult, find_slow

SCRIPT = "collectives.py"
JSON_SCHEMA = "clusterkit.bench.collectives/v1"
#: Below this share of the expected busbw (at the best size) a collective is called slow.
SLOW_AGAINST_EXPECTATION = 0.5


@dataclass
class CollectivesOptions:
    """What to sweep; mirrors the script's flags (``scripts/collectives.py --help``)."""

    ops: list[str] = field(default_factory=lambda: list(fmt.OPS))
    min_bytes: str = "1K"
    max_bytes: str = "16M"
    step_factor: int = 4
    sizes: list[int] = field(default_factory=list)
    iters: int = 10
    warmup: int = 2
    dtype: str = "float32"
    check: bool = True
    baseline: bool = False
    rounds: int = 1
    timeout_s: float = 120.0
    #: Sizes that would not finish by then (seconds since the epoch) are shrunk to what fits; 0: never.
    fit_by: float = 0.0

    def script_args(self) -> list[str]:
        args = ["--ops", ",".join(self.ops), "--iters", str(self.iters), "--warmup", str(self.warmup),
                "--dtype", self.dtype, "--check", "1" if self.check else "0", "--json",
                "--timeout-s", f"{self.timeout_s:g}"]
        if self.fit_by:
            args += ["--fit-by", f"{self.fit_by:.3f}"]
        if self.sizes:
            args += ["--sizes", ",".join(str(s) for s in self.sizes)]
        else:
            args += ["--min-bytes", self.min_bytes, "--max-bytes", self.max_bytes,
                     "--step-factor", str(self.step_factor)]
        if self.baseline:
            args += ["--baseline", "--rounds", str(self.rounds)]
        return args


@dataclass
class CollectivesReport:
    """One sweep: the run, the script's result, the expectation it is judged against, the findings."""

    run: WorkloadRun
    result: dict[str, Any] | None
    expectation: Expectation | None
    findings: list[Finding] = field(default_factory=list)
    search: SearchResult | None = None

    @property
    def complete(self) -> bool:
        """The sweep ran to its end (False: the rows measured before the run ended, or nothing)."""
        return self.result is not None and self.result.get("complete", True) is not False

    def to_json(self) -> dict[str, Any]:
        from clusterkit.core.findings_report import finding_to_json

        doc: dict[str, Any] = {
            "schema": JSON_SCHEMA, "hosts": self.run.hosts, "command": self.run.command,
            "duration_s": round(self.run.outcome.duration_s, 3), "ok": self.run.ok and not _errors(self.findings),
            "result": self.result,
            "expected_busbw_gbs": self.expectation.busbw_gbs if self.expectation else None,
            "expectation": self.expectation.explain() if self.expectation else "not computed",
            "findings": [finding_to_json(f) for f in self.findings + self.run.diagnosis.findings],
            "log_tails": self.run.diagnosis.tails,
        }
        if self.search is not None:
            doc["slow_node_search"] = search_to_json(self.search)
        return doc


def _errors(findings: Sequence[Finding]) -> bool:
    return any(f.is_error for f in findings)


def peak(rows: Sequence[Mapping[str, Any]]) -> tuple[int, float]:
    """(size, busbw) of the best row of a sweep (either variant)."""
    best = (0, 0.0)
    for row in rows:
        for variant in (row.get("out_of_place"), row.get("in_place")):
            if variant and variant["busbw"] > best[1]:
                best = (int(row["size"]), float(variant["busbw"]))
    return best


def judge(result: Mapping[str, Any], expectation: Expectation | None) -> list[Finding]:
    """Findings for a sweep: wrong results, and each collective's best busbw against the expectation."""
    findings = []
    backend = str(result.get("backend", ""))
    expected = expectation.busbw_gbs if expectation else None
    for op, body in (result.get("ops") or {}).items():
        rows = body.get("rows", [])
        wrong = int(body.get("wrong") or 0)
        if wrong:
            sizes = [fmt.human_bytes(r["size"]) for r in rows
                     if any(v and v.get("wrong") for v in (r.get("out_of_place"), r.get("in_place")))]
            findings.append(Finding(
                "collectives-wrong", Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, op,
                f"{op} returned {wrong} wrong element(s) at {', '.join(sizes)}: data is corrupted in transit",
                "a collective that returns wrong data corrupts training silently",
                "run clusterkit doctor (ECC, XID, NVLink errors); clusterkit bench find-slow names the node"))
        size, best = peak(rows)
        if expected and best:
            ratio = best / expected
            text = (f"{op}: best busbw {best:.4g} GB/s at {fmt.human_bytes(size)} = {fmt.human_share(ratio)} of the "
                    f"expected {expected:.4g} GB/s")
            if ratio < SLOW_AGAINST_EXPECTATION:
                findings.append(Finding(
                    "collectives-below-expectation",
                    Severity.INFO if backend == "gloo" else Severity.WARNING, Outcome.FAIL, CLUSTER_HOST, op,
                    text + (" (gloo is CPU-bound and rarely fills a link)" if backend == "gloo" else ""),
                    "the job's gradients and parameters cross the same links", "clusterkit bench find-slow HOSTFILE "
                    "names a slow node or link; clusterkit doctor checks link widths, IB ports and NCCL settings"))
            else:
                findings.append(Finding("collectives-below-expectation", Severity.WARNING, Outcome.PASS,
                                        CLUSTER_HOST, op, text, "", ""))
        elif best:
            findings.append(Finding("collectives-measured", Severity.INFO, Outcome.PASS, CLUSTER_HOST, op,
                                    f"{op}: best busbw {best:.4g} GB/s at {fmt.human_bytes(size)}", "", ""))
    return findings


def partial_result(outcome: RunOutcome) -> dict[str, Any] | None:
    """The report of a run that ended before its sweep did, from the rows rank 0 printed as it measured
    them (``complete`` False); None when not even the header came."""
    headers = outcome.results("collectives_header")
    if not headers:
        return None
    header = headers[-1]
    result: dict[str, Any] = {k: v for k, v in header.items() if k not in ("planned_ops", "sizes", "kind", "rank")}
    sizes = [int(s) for s in header.get("sizes") or []]
    rows: dict[str, list[dict[str, Any]]] = {str(op): [] for op in header.get("planned_ops") or []}
    reached: dict[str, int] = {}
    for doc in outcome.results("collectives_row"):
        op = str(doc.get("op"))
        rows.setdefault(op, []).append(doc["row"])
        reached[op] = max(reached.get(op, 0), int(doc.get("size") or 0))
    result["ops"] = {}
    for op, measured in rows.items():
        wrong = sum(int(v.get("wrong") or 0) for r in measured for v in (r.get("out_of_place"), r.get("in_place"))
                    if v)
        result["ops"][op] = {"rows": measured, "avg_busbw": fmt.average_busbw(measured), "wrong": wrong,
                             "not_measured": [s for s in sizes if s > reached.get(op, 0)]}
    result["complete"] = False
    return result


def run_collectives(ctx: WorkloadContext, options: CollectivesOptions, expectation: Expectation | None,
                    hosts: Sequence[ActiveHost] | None = None) -> CollectivesReport:
    """Sweep the collectives over ``hosts`` (default: all) and judge the result; when the run ends
    before the sweep does (its deadline, a failed rank), the rows measured until then."""
    run = ctx.launch(SCRIPT, options.script_args(), "collectives", hosts=hosts)
    results = run.outcome.results("collectives")
    result = results[-1] if results else partial_result(run.outcome)
    report = CollectivesReport(run, result, expectation)
    if result is not None and report.complete:
        report.findings = judge(result, expectation)
    elif result is not None:
        report.findings = cut_short(result, expectation, run.outcome)
    return report


def cut_short(result: Mapping[str, Any], expectation: Expectation | None, outcome: RunOutcome) -> list[Finding]:
    """Findings for a sweep the run's end cut short: wrong data, and what each collective measured
    until then against the expectation (beside the finding that says how the run ended)."""
    findings = [f for f in judge(result, None) if f.check_id == "collectives-wrong"]
    expected = expectation.busbw_gbs if expectation else None
    how = (f"the deadline ({outcome.duration_s:.0f}s)" if outcome.timed_out
           else "the run's failure" if not outcome.ok else "the run's end")
    parts = []
    for op, body in (result.get("ops") or {}).items():
        rows = body.get("rows", [])
        if not rows:
            parts.append(f"{op}: no size measured")
            continue
        size, best = peak(rows)
        sizes = [int(r["size"]) for r in rows]
        text = f"{op}: {fmt.human_bytes(min(sizes))} to {fmt.human_bytes(max(sizes))} measured"
        if body.get("not_measured"):
            text += f" ({fmt.human_bytes(min(body['not_measured']))} and up not)"
        text += f", best busbw {best:.4g} GB/s at {fmt.human_bytes(size)}"
        if expected:
            text += f" = {fmt.human_share(best / expected)} of the expected {expected:.4g} GB/s"
        parts.append(text)
    if parts:
        findings.append(Finding(
            "collectives-cut-short", Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, "sweep",
            f"measured before {how}: " + "; ".join(parts),
            "the sizes measured before the run ended still say how fast the links are",
            "a busbw far below the expectation means a slow link: clusterkit bench find-slow HOSTFILE names it; "
            "else a smaller --max-bytes or a longer --deadline"))
    return findings


def save(report: CollectivesReport, path: Path) -> list[Path]:
    """Write the JSON document to ``path`` and the plot beside it (same name, ``.png``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    written = [path]
    if report.result is not None:
        expected = report.expectation.busbw_gbs if report.expectation else None
        title = (f"{report.result['world_size']} ranks, {report.result['backend']} ({report.result['dtype']}) on "
                 f"{', '.join(report.run.hosts)}")
        written.append(save_png(busbw_series(report.result), path.with_suffix(".png"), expected, title))
    return written


# ----------------------------------------------------------------------------------- slow-node search


#: A pair first measures this small message (or --size when smaller): its rate tells what fits the deadline.
PROBE_BYTES = 256 * 1024
#: What a pair's run needs after its last measurement (check, barrier, the launcher ending).
PAIR_TEARDOWN_S = 10.0


def pair_sizes(size: int) -> list[int]:
    """The sizes a pair measures: a small probe first, then ``size`` (shrunk on the node to what fits)."""
    return [PROBE_BYTES, size] if size > PROBE_BYTES else [size]


def pair_result(group: tuple[str, ...], run: WorkloadRun, seconds: float) -> PairResult:
    """A pair's busbw from its run: the best all_reduce row measured, even when the deadline cut the
    run short (a slow link is measured, not called broken); None only when nothing was measured or a
    rank failed."""
    docs = run.outcome.results("collectives")
    result = docs[-1] if docs else partial_result(run.outcome)
    rows = (result or {}).get("ops", {}).get("all_reduce", {}).get("rows", []) if result else []
    failure = next((f.message for f in run.diagnosis.findings if f.is_error), "the run failed")
    if not rows or not (run.ok or run.outcome.timed_out):
        return PairResult(group, None, failure if not run.ok else "nothing measured", seconds)
    size, best = peak(rows)
    notes = [f"{fmt.human_bytes(r['requested_bytes'])} would not finish within the pair's deadline at this "
             f"rate; measured {fmt.human_bytes(r['size'])}" for r in rows if r.get("requested_bytes")]
    skipped = result.get("ops", {}).get("all_reduce", {}).get("not_measured") if result else None
    if skipped:
        notes.append(f"{fmt.human_bytes(min(skipped))} not measured: it would not finish within the deadline")
    if not run.ok and docs:
        notes.append("every size was measured, but the run did not end within the deadline")
    elif not run.ok:
        notes.append(f"the deadline ended the run after {fmt.human_bytes(max(int(r['size']) for r in rows))}")
    return PairResult(group, best, "; ".join(notes), seconds, size)


def pair_measure(ctx: WorkloadContext, size: int, iters: int, deadline_s: float, dtype: str = "float32",
                 notes: Callable[[str], None] | None = None) -> Any:
    """A :data:`clusterkit.workloads.slownode.Measure` that times all_reduce over each group at once.

    Each pair measures a small message first, then ``size`` shrunk to what its rate lets finish within
    ``deadline_s`` (:func:`pair_sizes`), so a slow link gets a figure rather than a timeout. Each
    group gets its own master port (the base port + its index); a run that failed only because its
    port was taken is retried once on another port, so a busy port never convicts a node.
    """
    by_name = {h.name: h for h in ctx.hosts}
    ctx.shipped()

    def one(group: tuple[str, ...], port: int) -> PairResult:
        started = time.monotonic()
        for attempt in range(2):
            options = CollectivesOptions(ops=["all_reduce"], sizes=pair_sizes(size), iters=iters, warmup=1,
                                         dtype=dtype, timeout_s=max(10.0, deadline_s - PAIR_TEARDOWN_S),
                                         fit_by=time.time() + deadline_s - PAIR_TEARDOWN_S)
            run = ctx.launch(SCRIPT, options.script_args(), f"all_reduce {' + '.join(group)}",
                             hosts=[by_name[n] for n in group], master_port=port + 100 * attempt,
                             deadline_s=deadline_s, quiet=True)
            if not any(f.check_id == "workload-master-port-busy" for f in run.diagnosis.findings):
                break
        return pair_result(group, run, time.monotonic() - started)

    def measure(groups: list[tuple[str, ...]]) -> list[PairResult]:
        results: list[PairResult | None] = [None] * len(groups)

        def work(i: int) -> None:
            results[i] = one(groups[i], ctx.master_port + 1 + i)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(groups))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done = [r if r is not None else PairResult(g, None, "measurement crashed")
                for r, g in zip(results, groups, strict=True)]
        if notes is not None:
            for r in done:
                value = r.measured if r.busbw is not None else f"failed: {r.detail}"
                notes(f"find-slow: {' + '.join(r.nodes)}: {value} ({r.seconds:.1f}s)")
        return done

    return measure


def search_slow(ctx: WorkloadContext, size: int, iters: int = 5, deadline_s: float = 120.0,
                slow_ratio: float = 0.5, dtype: str = "float32") -> SearchResult:
    """Pairwise rings until the slow or broken nodes (or links) are named."""
    measure = pair_measure(ctx, size, iters, deadline_s, dtype, ctx.notes)
    return find_slow(ctx.names, measure, slow_ratio=slow_ratio)


def search_findings(search: SearchResult) -> list[Finding]:
    findings = []
    for node in search.excluded:
        findings.append(Finding(
            f"node-{search.verdicts[node]}", Severity.ERROR, Outcome.FAIL, node, "all_reduce",
            f"{node} is {search.verdicts[node]}: {search.why(node)}",
            "every collective waits for its slowest member: one slow node sets the pace of the whole job",
            "leave it out (--write-hostfile writes a hostfile without it), then check its links and NICs "
            "(clusterkit doctor; ethtool; ibstat)"))
    for a, b in search.slow_links:
        findings.append(Finding(
            "link-slow", Severity.ERROR, Outcome.FAIL, a, f"link to {b}",
            f"the link between {a} and {b} is slow while both are fine with other nodes",
            "a collective's ring crosses this link", "check the cabling/switch ports between them"))
    return findings


def search_to_json(search: SearchResult) -> dict[str, Any]:
    return {
        "slow_ratio": search.slow_ratio, "reference_busbw_gbs": search.reference_busbw,
        "verdicts": search.verdicts, "excluded": search.excluded,
        "slow_links": [list(link) for link in search.slow_links], "seconds": round(search.seconds, 2),
        "rounds": [[{"nodes": list(r.nodes), "busbw_gbs": r.busbw, "size_bytes": r.size or None, "detail": r.detail,
                     "seconds": round(r.seconds, 2)} for r in rnd] for rnd in search.rounds],
        "evidence": search.evidence(),
    }
