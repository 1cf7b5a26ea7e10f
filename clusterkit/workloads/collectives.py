"""The collectives bench from the head: run it, judge it against the topology, draw it, find the slow node."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from clusterkit.checks.registry import CLUSTER_HOST
from clusterkit.findings import Finding, Outcome, Severity
from clusterkit.inventory import ActiveHost
from clusterkit.workloads.expect import Expectation
from clusterkit.workloads.plot import busbw_series, save_png, terminal_plot
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

    def script_args(self) -> list[str]:
        args = ["--ops", ",".join(self.ops), "--iters", str(self.iters), "--warmup", str(self.warmup),
                "--dtype", self.dtype, "--check", "1" if self.check else "0", "--json",
                "--timeout-s", f"{self.timeout_s:g}"]
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

    def to_json(self) -> dict[str, Any]:
        from clusterkit.report import finding_to_json

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
            text = (f"{op}: best busbw {best:.4g} GB/s at {fmt.human_bytes(size)} = {ratio:.0%} of the expected "
                    f"{expected:.4g} GB/s")
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


def run_collectives(ctx: WorkloadContext, options: CollectivesOptions, expectation: Expectation | None,
                    hosts: Sequence[ActiveHost] | None = None) -> CollectivesReport:
    """Sweep the collectives over ``hosts`` (default: all) and judge the result."""
    run = ctx.launch(SCRIPT, options.script_args(), "collectives", hosts=hosts)
    results = run.outcome.results("collectives")
    result = results[-1] if results else None
    report = CollectivesReport(run, result, expectation)
    if result is not None:
        report.findings = judge(result, expectation)
    return report


def render(report: CollectivesReport, console: Console, plot: bool = True) -> None:
    """nccl-tests' tables, the expectation and the curve."""
    result = report.result
    if result is None:
        return
    console.print(Text(f"# {result['world_size']} ranks on {', '.join(report.run.hosts)}, backend "
                       f"{result['backend']}, device {result['device']}, dtype {result['dtype']}", style="bold"),
                  soft_wrap=True)
    for op, body in result["ops"].items():
        console.print(f"#\n# {op}", highlight=False, markup=False)
        for line in fmt.header_lines():
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        for row in body["rows"]:
            console.print(fmt.format_row(row), highlight=False, markup=False, soft_wrap=True)
        for line in fmt.footer_lines(int(body["wrong"]), float(body["avg_busbw"])):
            console.print(line, highlight=False, markup=False)
    if report.expectation is not None:
        console.print(report.expectation.explain(), style="dim", soft_wrap=True, highlight=False, markup=False)
    if plot:
        expected = report.expectation.busbw_gbs if report.expectation else None
        for line in terminal_plot(busbw_series(result), expected):
            console.print(line, highlight=False, markup=False, soft_wrap=True)


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


def pair_measure(ctx: WorkloadContext, size: int, iters: int, deadline_s: float, dtype: str = "float32",
                 log: Console | None = None) -> Any:
    """A :data:`clusterkit.workloads.slownode.Measure` that times all_reduce over each group at once.

    Each group gets its own master port (the base port + its index); a run that failed only because
    its port was taken is retried once on another port, so a busy port never convicts a node.
    """
    by_name = {h.name: h for h in ctx.hosts}
    options = CollectivesOptions(ops=["all_reduce"], sizes=[size], iters=iters, warmup=1, dtype=dtype,
                                 timeout_s=max(10.0, deadline_s - 10))
    ctx.shipped()

    def one(group: tuple[str, ...], port: int) -> PairResult:
        started = time.monotonic()
        for attempt in range(2):
            run = ctx.launch(SCRIPT, options.script_args(), f"all_reduce {' + '.join(group)}",
                             hosts=[by_name[n] for n in group], master_port=port + 100 * attempt,
                             deadline_s=deadline_s, quiet=True)
            if not any(f.check_id == "workload-master-port-busy" for f in run.diagnosis.findings):
                break
        docs = run.outcome.results("collectives")
        if run.ok and docs:
            _, best = peak(docs[-1]["ops"]["all_reduce"]["rows"])
            return PairResult(group, best, "", time.monotonic() - started)
        cause = next((f.message for f in run.diagnosis.findings), "the run failed")
        return PairResult(group, None, cause, time.monotonic() - started)

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
        if log is not None:
            for r in done:
                value = f"{r.busbw:.4g} GB/s" if r.busbw is not None else f"failed: {r.detail}"
                log.print(f"find-slow: {' + '.join(r.nodes)}: {value} ({r.seconds:.1f}s)", highlight=False,
                          markup=False, soft_wrap=True)
        return done

    return measure


def search_slow(ctx: WorkloadContext, size: int, iters: int = 5, deadline_s: float = 120.0,
                slow_ratio: float = 0.5, dtype: str = "float32") -> SearchResult:
    """Pairwise rings until the slow or broken nodes (or links) are named."""
    measure = pair_measure(ctx, size, iters, deadline_s, dtype, ctx.console)
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
        "rounds": [[{"nodes": list(r.nodes), "busbw_gbs": r.busbw, "detail": r.detail, "seconds": round(r.seconds, 2)}
                    for r in rnd] for rnd in search.rounds],
        "evidence": search.evidence(),
    }
