"""The ZeRO smoke suite from the head: build the ops once per node, run the stages, judge what came back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, Severity
from clusterkit.core.inventory import ActiveHost
from clusterkit.workloads.session import WorkloadContext, WorkloadRun

SCRIPT = "zero_suite.py"
ALL_STAGES = ("0", "1", "2", "3", "3o")
#: Largest difference between live weights and a reloaded/consolidated/16-bit copy, by precision.
WEIGHT_TOLERANCE = {"fp32": 1e-6, "bf16": 1e-2}
#: A JIT build while the stages run means the up-front build missed an op (or its cache). The last:
#: ninja 1.12+ finding a cache built by an older ninja recompiles it all.
BUILD_MARKERS = ("Building extension module", "Emitting ninja build file", "build log version is too old")


@dataclass
class ZeroOptions:
    stages: list[str] = field(default_factory=lambda: list(ALL_STAGES))
    steps: int = 3
    hidden: int = 32
    micro_batch: int = 4
    ops_cache: str = "auto"
    checkpoint_dir: str = "{tmp}/clusterkit-{uid}/zero-suite"
    build_deadline_s: float = 900.0
    timeout_s: float = 120.0

    def common(self) -> list[str]:
        return ["--stages", ",".join(self.stages), "--ops-cache", self.ops_cache, "--timeout-s",
                f"{self.timeout_s:g}"]

    def suite_args(self) -> list[str]:
        return [*self.common(), "--steps", str(self.steps), "--hidden", str(self.hidden), "--micro-batch",
                str(self.micro_batch), "--checkpoint-dir", self.checkpoint_dir]


@dataclass
class ZeroReport:
    build: WorkloadRun | None
    suite: WorkloadRun | None
    builds: dict[str, dict[str, Any]] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def runs(self) -> list[WorkloadRun]:
        return [run for run in (self.build, self.suite) if run is not None]

    def timings(self) -> dict[str, Any]:
        """Where the wall time went: JIT build, start-up (launch to the first stage) and training."""
        out: dict[str, Any] = {}
        if self.build is not None:
            out["build_launch_s"] = round(self.build.outcome.duration_s, 2)
            out["build_ops_s"] = {host: {op["op"]: round(op.get("seconds", 0.0), 2) for op in doc.get("ops", [])
                                         if "op" in op} for host, doc in self.builds.items()}
        if self.suite is not None:
            out["suite_launch_s"] = round(self.suite.outcome.duration_s, 2)
        if self.result is not None:
            seconds = self.result.get("seconds", {})
            stages = self.result.get("stages", [])
            train = sum(sum(s.get("step_seconds", [])) for s in stages)
            init = sum(s.get("seconds", {}).get("initialize", 0.0) for s in stages)
            checkpoint = sum(sum(v for k, v in s.get("seconds", {}).items() if k != "initialize") for s in stages)
            in_script = float(seconds.get("total", 0.0))
            out.update({
                "startup_s": round((self.suite.outcome.duration_s if self.suite else 0.0) - in_script
                                   + seconds.get("import", 0.0) + seconds.get("init_distributed", 0.0), 2),
                "launcher_s": round((self.suite.outcome.duration_s if self.suite else 0.0) - in_script, 2),
                "import_s": round(seconds.get("import", 0.0), 2),
                "init_distributed_s": round(seconds.get("init_distributed", 0.0), 2),
                "engine_init_s": round(init, 2), "train_s": round(train, 3),
                "checkpoint_s": round(checkpoint, 2)})
        return out


def first_slot_per_node(hosts: Sequence[ActiveHost]) -> list[ActiveHost]:
    """One rank per node (its first slot): the ops build once per node, not once per rank."""
    return [ActiveHost(h.name, h.slots[:1], h.entry) for h in hosts]


def run_zero(ctx: WorkloadContext, options: ZeroOptions, build: bool = True) -> ZeroReport:
    """Build the ops (one rank per node), then run the stages on every rank; judge both."""
    report = ZeroReport(None, None)
    if build:
        report.build = ctx.launch(SCRIPT, [*options.common(), "--build-only"], "zero: building ops",
                                  hosts=first_slot_per_node(ctx.hosts), deadline_s=options.build_deadline_s)
        for doc in report.build.outcome.results("zero_build"):
            report.builds[report.build.rank_hosts.get(int(doc.get("rank", -1)), str(doc.get("host")))] = doc
        report.findings += build_findings(report.build, report.builds)
        if not report.build.ok:
            return report
    report.suite = ctx.launch(SCRIPT, options.suite_args(), "zero: stages")
    docs = report.suite.outcome.results("zero_suite")
    report.result = docs[-1] if docs else None
    if report.result is not None:
        report.findings += judge(report.result)
    report.findings += rebuilt_during_run(report.suite)
    return report


def build_findings(run: WorkloadRun, builds: dict[str, dict[str, Any]]) -> list[Finding]:
    findings = []
    for host, doc in builds.items():
        for op in doc.get("ops", []):
            if not op.get("ok"):
                findings.append(Finding(
                    "zero-ops-build-failed", Severity.ERROR, Outcome.FAIL, host, op.get("op", op.get("builder", "")),
                    f"DeepSpeed's {op.get('op', op.get('builder'))} op did not build on {host}: {op.get('error')}",
                    "a training step that needs the op fails on this node, or every rank waits for it",
                    "see the build log tail; install ninja and a C++ compiler (and CUDA headers on GPU nodes)"))
            else:
                how = "already built" if op.get("cached") else f"built in {op.get('seconds', 0):.1f}s"
                findings.append(Finding("zero-ops-build", Severity.INFO, Outcome.PASS, host, op["op"],
                                        f"{op['op']}: {how} in {doc.get('cache')}", "", ""))
    return findings


def rebuilt_during_run(run: WorkloadRun) -> list[Finding]:
    hosts = sorted({line.node or "head" for line in run.outcome.lines if any(m in line.text for m in BUILD_MARKERS)})
    return [Finding("zero-ops-built-during-run", Severity.WARNING, Outcome.FAIL, host, "",
                    "a DeepSpeed op was JIT-compiled while the stages ran (the up-front build or its cache was "
                    "missed): every rank waits while one compiles",
                    "a rank still compiling when the others reach a collective can time them out",
                    "build the ops up front into a node-local cache (clusterkit bench zero does), or prebuild them "
                    "(DS_BUILD_OPS=1)") for host in hosts]


def judge(result: dict[str, Any]) -> list[Finding]:
    """Findings from the suite's own report: failed stages, losses that disagree, weights that differ."""
    findings: list[Finding] = []
    precision = str(result.get("precision", "fp32"))
    weight_tol = WEIGHT_TOLERANCE.get(precision, 1e-2)
    agreement = result.get("loss_agreement") or {}
    tolerance = agreement.get("tolerance")
    reference = agreement.get("reference")
    for stage in result.get("stages", []):
        name = stage.get("name", stage.get("stage"))
        if "error" in stage:
            findings.append(Finding("zero-stage-failed", Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, name,
                                    f"{name} failed: {stage['error']}",
                                    "a job with this ZeRO stage would fail the same way",
                                    "see the traceback in the log tail"))
            continue
        problems = []
        diff = (agreement.get("stages") or {}).get(stage["stage"])
        if diff is not None and tolerance is not None and diff > tolerance:
            problems.append(("zero-loss-mismatch", f"{name}'s losses differ from ZeRO-{reference}'s by {diff:.2e} "
                                                   f"(relative), more than the {tolerance:g} allowed"))
        checkpoint = stage.get("checkpoint") or {}
        if not checkpoint.get("loaded"):
            problems.append(("zero-checkpoint-mismatch", f"{name}: the checkpoint did not load back"))
        elif checkpoint.get("max_abs_diff", 0.0) > weight_tol:
            problems.append(("zero-checkpoint-mismatch", f"{name}: reloaded weights differ from the live ones by "
                                                         f"{checkpoint['max_abs_diff']:.2e}"))
        elif abs(checkpoint.get("next_loss_live", 0.0) - checkpoint.get("next_loss_loaded", 0.0)) > max(
                tolerance or 0.0, 1e-6) * max(1.0, abs(checkpoint.get("next_loss_live", 0.0))):
            problems.append(("zero-checkpoint-mismatch", f"{name}: the reloaded engine's next loss "
                                                         f"{checkpoint['next_loss_loaded']:.6g} differs from the "
                                                         f"live one's {checkpoint['next_loss_live']:.6g} "
                                                         "(optimizer state not restored?)"))
        for key, check in (("zero_to_fp32", "zero-to-fp32-mismatch"), ("save_16bit", "zero-16bit-save-mismatch")):
            part = stage.get(key)
            if part and part.get("max_abs_diff", 0.0) > weight_tol:
                problems.append((check, f"{name}: {key} weights differ from the live ones by "
                                        f"{part['max_abs_diff']:.2e}"))
        for check_id, message in problems:
            findings.append(Finding(check_id, Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, name, message,
                                    "a checkpoint or consolidation that does not give back the trained weights "
                                    "loses the training run", "report it with the suite's JSON (--save)"))
        if not problems:
            losses = stage.get("losses", [])
            extra = [k for k in ("zero_to_fp32", "save_16bit") if k in stage]
            summary = f"{name}: {len(losses)} steps, final loss {losses[-1]:.6g}" if losses else f"{name}: ran"
            summary += f"; checkpoint reload{', ' + ', '.join(extra) if extra else ''} match the live weights"
            findings.append(Finding("zero-stage", Severity.INFO, Outcome.PASS, CLUSTER_HOST, name, summary, "", ""))
    if agreement and not agreement.get("agree") and not any(f.check_id == "zero-loss-mismatch" for f in findings):
        findings.append(Finding("zero-loss-mismatch", Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, "",
                                "the stages' losses could not be compared", "", "see the stages above"))
    return findings
