"""Why a workload failed: a supervised run's log turned into findings (cause, node and rank, fix, log tail).

The knowledge is a table of small declarative rules (:data:`RULES`): a regular expression searched in
each line, the cause and the fix (``str.format`` templates over the pattern's named groups plus
``node`` and ``rank``), a category and a priority. Rules of kind ``symptom`` (a rank's exit code,
pdsh's "ssh exited") only speak for a node where no rule found a cause. The run's own end (deadline,
a rank that never finished) is judged from the supervised run, not from the text.

Every rule is tested on a real log captured from a real failing run (``tests/fixtures/workload-logs``,
see its README for how each was produced).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, Severity
from clusterkit.workloads.run import LogLine, RunOutcome

CAUSE, SYMPTOM = "cause", "symptom"


@dataclass(frozen=True)
class LogRule:
    """One recognisable failure: where its text is, what it means and what to do."""

    id: str
    category: str
    pattern: str
    cause: str
    fix: str
    #: ``cause`` rules explain; ``symptom`` rules only report what no cause explained on that node.
    kind: str = CAUSE
    #: Lower first when several rules fire (the root cause before its consequences).
    priority: int = 50
    severity: Severity = Severity.ERROR
    #: The named group that names the node, for lines the head prints about a node (pdsh, runner).
    host_group: str | None = None
    #: Also reported (as a warning) when the run succeeded: the workload got by, a job may not.
    on_success: bool = False

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


_CATEGORY_WHY = {
    "launcher": "DeepSpeed's runner on this machine could not start the job",
    "ssh": "pdsh starts every node's ranks over SSH from the launching machine",
    "rendezvous": "every rank meets the others at MASTER_ADDR:MASTER_PORT before any collective",
    "interpreter": "pdsh runs `cd <launch dir>; <python> -u -m deepspeed.launcher.launch` on every node",
    "module": "every rank imports the workload's modules from the training env on its own node",
    "extension-build": "DeepSpeed JIT-compiles its C++/CUDA ops on each node the first time they are used",
    "cuda": "the ranks load the CUDA runtime and libraries of the training env on their node",
    "nccl": "NCCL carries the collectives between GPUs and nodes",
    "gloo": "gloo carries the collectives between CPU ranks over TCP",
    "oom": "a rank ran out of memory",
    "exit": "a rank or a node's launcher ended badly",
}

RULES: tuple[LogRule, ...] = (
    # -- launcher (the head) -------------------------------------------------------------------------
    LogRule("launcher-missing", "launcher", r"launcher '(?P<launcher>[\w-]+)' not installed",
            "DeepSpeed's {launcher} launcher is not installed on the launching machine",
            "install it (Debian/Ubuntu: sudo apt-get install -y pdsh) or pass another --launcher", priority=5),
    LogRule("launcher-first-host-ssh", "launcher",
            r"host=(?P<host>\S+) was not reachable via ssh",
            "the runner could not log into the first host {host} without a password",
            "run `clusterkit bootstrap HOSTFILE` (keys, known_hosts), then check: ssh -o BatchMode=yes {host} true",
            priority=6, host_group="host"),
    LogRule("deepspeed-env-line", "launcher", r"key, val = var\.split\('=', maxsplit=1\)",
            "a line of .deepspeed_env has no '=' (a blank or comment line): DeepSpeed's runner cannot parse it",
            "remove blank and comment lines from ~/.deepspeed_env and ./.deepspeed_env "
            "(clusterkit doctor names the line)", priority=5),
    LogRule("hostfile-missing", "launcher", r"Unable to find hostfile, will proceed with training with local",
            "DeepSpeed found no hostfile and ran on this machine only",
            "pass the hostfile's absolute path", priority=20, severity=Severity.WARNING, on_success=True),
    # -- SSH / pdsh --------------------------------------------------------------------------------------
    LogRule("ssh-denied", "ssh", r"Permission denied \((?P<methods>[^)]*)\)",
            "SSH from the launching machine to {node} was refused ({methods}): its key is not authorized there",
            "run `clusterkit bootstrap HOSTFILE` again, or append the launching machine's public key to "
            "~/.ssh/authorized_keys on {node}", priority=10),
    LogRule("ssh-host-key-changed", "ssh", r"REMOTE HOST IDENTIFICATION HAS CHANGED",
            "the host key of {node} changed since it was recorded in known_hosts",
            "verify the new key out of band, then: ssh-keygen -R {node} && clusterkit bootstrap HOSTFILE "
            "--trust-new-hosts", priority=10),
    LogRule("ssh-host-key-unknown", "ssh", r"Host key verification failed",
            "{node}'s host key is not in known_hosts on the launching machine",
            "clusterkit bootstrap HOSTFILE --trust-new-hosts (or ssh-keyscan into ~/.ssh/known_hosts)",
            priority=11),
    LogRule("ssh-unreachable", "ssh",
            r"ssh: connect to host (?P<host>\S+) port (?P<port>\d+): (?P<reason>.+)",
            "SSH to {host} port {port} failed: {reason}",
            "check that {host} is up and sshd runs there: ssh -v {host} true", priority=10, host_group="host"),
    LogRule("ssh-unknown-host", "ssh", r"ssh: Could not resolve hostname (?P<host>[^:\s]+)",
            "{host} cannot be resolved from the launching machine",
            "add {host} to DNS or /etc/hosts, or use addresses in the hostfile", priority=10, host_group="host"),
    LogRule("pdsh-rsh", "ssh", r"rcmd: socket: Permission denied",
            "pdsh used rsh, not ssh", "export PDSH_RCMD_TYPE=ssh (DeepSpeed sets it; a hand-run pdsh needs -R ssh)",
            priority=12),
    LogRule("pdsh-ssh-exit", "ssh", r"^pdsh@[^:]+: (?P<host>[^:\s]+): ssh exited with exit code (?P<code>\d+)",
            "the remote command on {host} ended with exit code {code}",
            "see the log tail of {host} below", kind=SYMPTOM, priority=90, host_group="host"),
    # -- rendezvous / port -------------------------------------------------------------------------------
    LogRule("master-port-busy", "rendezvous", r"EADDRINUSE|[Aa]ddress already in use",
            "rank 0 could not listen on the master port: another process holds it",
            "pass a free --master-port (clusterkit launch picks one), or stop the process on that port "
            "(ss -ltnp 'sport = :PORT')", priority=15),
    LogRule("rendezvous-timeout", "rendezvous",
            r"client socket has timed out after (?P<after>\d+(?:\.\d+)?)(?P<unit>ms|s) while trying to connect to "
            r"\((?P<addr>[^,]+), (?P<port>\d+)\)",
            "{node} could not reach the master at {addr}:{port} within {after} {unit}",
            "check that {addr} is the first host's address reachable from {node} (clusterkit doctor tests it) "
            "and that no firewall drops port {port}; or pass --master-addr", priority=16),
    LogRule("rendezvous-refused", "rendezvous",
            r"client socket has failed to connect to .*?(?P<where>\[[^\]]+\]:\d+|\S+:\d+).*?(?P<reason>"
            r"[Cc]onnection refused|[Nn]o route to host|[Nn]etwork is unreachable)",
            "{node} could not connect to the master at {where}: {reason}",
            "check that rank 0 started on the first host and the master address is reachable from {node}",
            priority=17),
    LogRule("rendezvous-clients-missing", "rendezvous",
            r"Timed out after (?P<after>\d+) seconds waiting for clients\. (?P<joined>\d+)/(?P<total>\d+) clients "
            r"joined",
            "rank 0 waited {after}s at the rendezvous: only {joined} of {total} ranks joined",
            "the missing ranks' nodes did not start them or cannot reach the master: see the ranks that printed "
            "nothing, and check the master address and port from those nodes", kind=SYMPTOM, priority=80),
    # -- interpreter / module -----------------------------------------------------------------------------
    LogRule("launch-dir-missing", "interpreter", r"cd: (?P<dir>/[^:]*): No such file or directory",
            "the launch directory {dir} does not exist on {node}: pdsh's `cd` failed there, so a job's relative "
            "paths (its script, its config) break on {node}",
            "create it on {node} (or sync the code there: clusterkit bootstrap --sync DIR), or launch from a "
            "directory every node has", priority=20, on_success=True),
    LogRule("interpreter-missing", "interpreter",
            r"(?:bash|sh)(?:: line \d+)?: (?P<python>/\S*python[\d.]*): No such file or directory",
            "the training interpreter {python} does not exist on {node}",
            "install the training env at the same path on every node ({python})", priority=20),
    LogRule("script-missing", "interpreter",
            r"can't open file '(?P<script>[^']+)': \[Errno 2\] No such file or directory",
            "the script {script} does not exist on {node}", "put it at the same path on every node", priority=21),
    LogRule("cuda-library-missing", "cuda",
            r"(?P<lib>lib(?:cudart|cublas|cublasLt|cudnn[\w]*|nccl|cuda|nvrtc|cusparse|cufft|curand|cusolver|"
            r"nvJitLink|nvToolsExt)\.so[\w.]*): cannot open shared object file",
            "{lib} cannot be loaded on {node}",
            "install the CUDA runtime that torch was built for, or put its lib directory on LD_LIBRARY_PATH in "
            "~/.deepspeed_env (non-interactive shells do not read ~/.bashrc)", priority=22),
    LogRule("shared-library-missing", "module",
            r"(?P<lib>lib[\w.+-]+\.so[\w.]*): cannot open shared object file",
            "the shared library {lib} cannot be loaded on {node}",
            "install it on {node} or add its directory to LD_LIBRARY_PATH in ~/.deepspeed_env", priority=23),
    LogRule("module-missing", "module", r"ModuleNotFoundError: No module named '(?P<module>[^']+)'",
            "Python module {module} is missing from the training env on {node}",
            "install it into the training env on {node} (the same env, at the same path, on every node)",
            priority=24),
    # -- extension build -----------------------------------------------------------------------------------
    LogRule("ninja-missing", "extension-build", r"Ninja is required to load C\+\+ extensions",
            "ninja is not on the PATH that {node}'s ranks see, so DeepSpeed cannot build its ops there",
            "put the env's bin/ first on PATH in ~/.deepspeed_env (clusterkit bootstrap does), pip install ninja, "
            "or prebuild the ops (DS_BUILD_OPS=1 pip install deepspeed)", priority=25),
    LogRule("compiler-missing", "extension-build",
            r"(?P<compiler>\b(?:c\+\+|g\+\+|gcc|cc|clang\+\+|nvcc|x86_64-linux-gnu-g\+\+)): (?:not found|"
            r"command not found)",
            "the compiler {compiler} is missing on {node}, so DeepSpeed's ops cannot be built there",
            "install a C++ toolchain on {node} (Debian/Ubuntu: sudo apt-get install -y g++), or prebuild the ops",
            priority=26),
    LogRule("header-missing", "extension-build", r"fatal error: (?P<header>[\w/.+-]+\.h\w*): No such file",
            "building a DeepSpeed op on {node} needs the header {header}, which is missing",
            "install the development package that provides {header} (Python.h: python3-dev; cuda headers: the "
            "CUDA toolkit) on {node}", priority=26),
    LogRule("cuda-home-missing", "extension-build", r"CUDA_HOME does not exist|MissingCUDAException",
            "DeepSpeed cannot find the CUDA toolkit on {node} to build its ops",
            "set CUDA_HOME in ~/.deepspeed_env, or prebuild the ops", priority=26),
    LogRule("nvcc-torch-mismatch", "extension-build",
            r"Installed CUDA version (?P<nvcc>\S+) does not match the version torch was compiled with "
            r"(?P<torch>\S+)",
            "nvcc on {node} is CUDA {nvcc}, torch was built with {torch}: DeepSpeed refuses to build ops",
            "install the matching CUDA toolkit (or DS_SKIP_CUDA_CHECK=1 at your own risk)", priority=26),
    LogRule("ninja-log-restarted", "extension-build", r"ninja: warning: build log version is too old",
            "ninja on {node} met a build log written by an older ninja and recompiles the ops from scratch "
            "(minutes per op, every rank waiting)",
            "build (or prebuild) the ops with the ninja the ranks run: the env's bin/ninja first on PATH, as "
            "~/.deepspeed_env sets it", priority=40, severity=Severity.WARNING, on_success=True),
    LogRule("extension-build-failed", "extension-build", r"Error building extension '(?P<ext>[^']+)'",
            "building DeepSpeed's {ext} op failed on {node}",
            "read the compiler lines in the log tail; prebuild the ops once per node (clusterkit bench zero "
            "builds them up front)", priority=30),
    LogRule("op-not-loaded", "extension-build", r"object has no attribute '(?P<attr>ds_opt_\w+)'",
            "a DeepSpeed op ({attr}) was never built on {node}; the build failed earlier",
            "see the build error above; prebuild the ops", priority=35),
    # -- CUDA ----------------------------------------------------------------------------------------------
    LogRule("torch-without-cuda", "cuda",
            r"Torch not compiled with CUDA enabled|module 'torch\._C' has no attribute '_cuda_\w+'",
            "the training env on {node} has a CPU-only torch", "install the CUDA build of torch there", priority=22),
    LogRule("cuda-driver-old", "cuda",
            r"CUDA driver version is insufficient|NVIDIA driver on your system is too old",
            "the NVIDIA driver on {node} is older than torch's CUDA needs",
            "upgrade the driver or install a torch built for an older CUDA", priority=22),
    LogRule("no-nvidia-driver", "cuda", r"Found no NVIDIA driver on your system",
            "{node} has no usable NVIDIA driver", "install the driver; check nvidia-smi on {node}", priority=22),
    LogRule("duplicate-gpu", "cuda",
            r"Duplicate GPU detected : rank (?P<a>\d+) and rank (?P<b>\d+) both on CUDA device",
            "ranks {a} and {b} share one GPU on {node}: more slots than GPUs",
            "set slots= to the GPU count of {node} in the hostfile", priority=22),
    LogRule("cuda-error", "cuda", r"CUDA error: (?P<what>.+)",
            "CUDA failed on {node}: {what}", "run clusterkit doctor on {node} (XID events, ECC, driver)",
            priority=40),
    # -- NCCL / gloo ---------------------------------------------------------------------------------------
    LogRule("gloo-interface", "gloo", r"Unable to find address for: (?P<iface>\S+)",
            "gloo on {node} was told to use interface {iface}, which {node} does not have",
            "set GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME) to an interface every node has, in "
            "~/.deepspeed_env (clusterkit bootstrap writes the right one)", priority=18),
    LogRule("nccl-system-error", "nccl", r"unhandled system error|ncclSystemError",
            "NCCL hit a system error on {node} (often an unroutable interface or a missing IB device)",
            "rerun with NCCL_DEBUG=INFO; set NCCL_SOCKET_IFNAME to the interface that connects the nodes",
            priority=40),
    LogRule("nccl-timeout", "nccl", r"Watchdog caught collective operation timeout.*?ran for (?P<ms>\d+) millisec",
            "a collective on {node} waited {ms} ms for a peer: another rank stalled or died",
            "look for the rank that failed first (its log below); prebuild ops so no rank is still compiling",
            priority=60),
    LogRule("peer-closed", "gloo",
            r"Connection closed by peer \[(?P<peer>[^\]]+)\]|Connection reset by peer|"
            r"Application timeout caused pair closure",
            "{node} lost its connection to a peer ({peer}) during a collective: that peer died or hung",
            "find the peer's own error (the rank that failed first)", kind=SYMPTOM, priority=70),
    LogRule("gloo-timeout", "gloo", r"Timed out waiting (?P<ms>\d+)ms for (?P<op>\w+) operation",
            "{node} waited {ms} ms for a peer in a {op}: another rank stalled or died",
            "find the rank that stopped first (its last progress below)", kind=SYMPTOM, priority=70),
    # -- out of memory ---------------------------------------------------------------------------------------
    LogRule("gpu-oom", "oom", r"CUDA out of memory|OutOfMemoryError",
            "a rank on {node} ran out of GPU memory",
            "smaller micro batch, a higher ZeRO stage, activation checkpointing or offload (clusterkit estimate)",
            priority=19),
    LogRule("cpu-oom", "oom",
            r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (?P<bytes>\d+) bytes",
            "a rank on {node} could not allocate {bytes} bytes of host memory",
            "less offload or smaller buffers; check free memory and ulimit -v on {node} (clusterkit estimate)",
            priority=19),
    LogRule("rank-killed", "oom", r"exits with return code = -9",
            "a rank on {node} was killed by SIGKILL, most often the kernel's OOM killer",
            "check `dmesg | grep -i oom` on {node}; reduce host memory use (offload, dataloader workers)",
            priority=45),
    LogRule("shm-bus-error", "oom", r"exits with return code = -7",
            "a rank on {node} died of SIGBUS: /dev/shm is too small", "give the node more /dev/shm "
            "(docker: --shm-size or --ipc=host)", priority=44),
    # -- generic ---------------------------------------------------------------------------------------------
    LogRule("rank-exited", "exit", r"exits with return code = (?P<code>[1-9]\d*)",
            "a rank on {node} exited with code {code}", "see the log tail of {node} below", kind=SYMPTOM,
            priority=95),
    LogRule("python-exception", "exit", r"^(?P<exc>[A-Z]\w*(?:Error|Exception)): (?P<message>.+)",
            "{exc} on {node}: {message}", "see the traceback in the log tail below", kind=SYMPTOM, priority=98),
)


@dataclass(frozen=True)
class Match:
    """A rule that fired on a line."""

    rule: LogRule
    line: LogLine
    node: str | None
    groups: Mapping[str, str]

    def render(self, template: str) -> str:
        values = {"node": self.node or "the launching machine",
                  "rank": "" if self.line.rank is None else str(self.line.rank)}
        values.update({k: v for k, v in self.groups.items() if v is not None})
        try:
            return template.format(**values)
        except (KeyError, IndexError):
            return template


@dataclass
class Diagnosis:
    """Findings for a failed run, and each finding's log tail (rendered lines)."""

    findings: list[Finding] = field(default_factory=list)
    tails: dict[str, list[str]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(f.is_error for f in self.findings)


def match_lines(lines: Sequence[LogLine], rules: Sequence[LogRule] = RULES) -> list[Match]:
    """Every first firing of each rule per node, in priority then time order."""
    seen: set[tuple[str, str | None]] = set()
    matches = []
    for line in lines:
        for rule in rules:
            found = rule.regex.search(line.text)
            if not found:
                continue
            groups = found.groupdict()
            node = groups.get(rule.host_group) if rule.host_group else line.node
            key = (rule.id, node)
            if key in seen:
                continue
            seen.add(key)
            matches.append(Match(rule, line, node, groups))
    return sorted(matches, key=lambda m: (m.rule.priority, m.line.seconds))


def _explained(matches: list[Match]) -> list[Match]:
    """Causes, plus the symptoms of nodes no cause explains (a node's first symptom only)."""
    causes = [m for m in matches if m.rule.kind == CAUSE]
    explained_nodes = {m.node for m in causes}
    explained_categories = {m.rule.category for m in causes}
    symptoms: list[Match] = []
    for m in matches:
        if m.rule.kind != SYMPTOM or m.node in explained_nodes:
            continue
        # A lost peer is the consequence of a cause found on another node.
        if m.rule.category in ("gloo", "nccl") and causes:
            continue
        if any(s.node == m.node for s in symptoms) or (m.rule.category in explained_categories and m.node is None):
            continue
        symptoms.append(m)
    return causes + symptoms


def diagnose(outcome: RunOutcome, rank_hosts: Mapping[int, str], workload: str) -> Diagnosis:
    """Findings for ``outcome``: recognised causes, then what the run's end says (deadline, silent ranks)."""
    diagnosis = Diagnosis()
    if outcome.ok:
        for m in match_lines(outcome.lines, [r for r in RULES if r.on_success]):
            diagnosis.findings.append(_finding(m, Severity.WARNING))
            _add_tail(diagnosis, outcome, m.node, m.line.rank)
        return diagnosis
    explained = _explained(match_lines(outcome.lines))
    causes = [m for m in explained if m.rule.kind == CAUSE]
    symptoms = [m for m in explained if m.rule.kind == SYMPTOM]
    _add_matches(diagnosis, outcome, causes)
    diagnosis.findings += _ending_findings(outcome, rank_hosts, workload, diagnosis, explained=bool(symptoms))
    _add_matches(diagnosis, outcome, symptoms)
    return diagnosis


def _finding(m: Match, severity: Severity | None = None) -> Finding:
    host = m.node or CLUSTER_HOST
    where = f"rank {m.line.rank}" if m.line.rank is not None else ("launcher" if m.node else "head")
    excerpt = m.line.text.strip()
    if len(excerpt) > 200:
        excerpt = excerpt[:197] + "..."
    return Finding(f"workload-{m.rule.id}", severity or m.rule.severity, Outcome.FAIL, host, where,
                   f"{m.render(m.rule.cause)} (log: {excerpt!r})",
                   _CATEGORY_WHY.get(m.rule.category, m.rule.category), m.render(m.rule.fix))


def _add_matches(diagnosis: Diagnosis, outcome: RunOutcome, matches: list[Match]) -> None:
    for m in matches:
        diagnosis.findings.append(_finding(m))
        _add_tail(diagnosis, outcome, m.node, m.line.rank)


def _add_tail(diagnosis: Diagnosis, outcome: RunOutcome, node: str | None, rank: int | None, n: int = 15) -> None:
    key = (node or "head") + (f" rank {rank}" if rank is not None else "")
    if key not in diagnosis.tails:
        diagnosis.tails[key] = [line.render() for line in outcome.tail(n, node=node, rank=rank)]


def _ending_findings(outcome: RunOutcome, rank_hosts: Mapping[int, str], workload: str,
                     diagnosis: Diagnosis, explained: bool = False) -> list[Finding]:
    """The run's end as findings: could not start, deadline passed, ranks that never finished."""
    findings: list[Finding] = []
    why = "one hung rank holds every other rank in its next collective"
    if outcome.start_error:
        return [Finding("workload-launcher-failed", Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, "head",
                        f"the deepspeed launcher could not start: {outcome.start_error}", _CATEGORY_WHY["launcher"],
                        "install DeepSpeed into the training env (pass --python with its interpreter)")]
    done = outcome.done_ranks()
    stuck = [r for r in sorted(rank_hosts) if r not in done]
    if outcome.timed_out:
        # What was last heard of each rank and when, the longest silent first: never a state not seen.
        news, heard = outcome.rank_news(), outcome.last_heard()
        silent_first = sorted(stuck, key=lambda r: (heard.get(r, -1.0), r))
        detail = "; ".join(f"rank {r} on {rank_hosts[r]}: "
                           f"{news.get(r, f'nothing heard from it in {outcome.duration_s:.0f}s')}"
                           for r in silent_first[:8])
        where = (f"ranks not done: {detail}" if detail else
                 "every rank had reported done, but the launcher (pdsh, ssh or launch.py) had not exited")
        findings.append(Finding(
            "workload-deadline", Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, workload,
            f"{workload} did not finish within {outcome.duration_s:.0f}s; {where}",
            why, "look at the rank silent longest (listed first): a rank behind a slow or saturated link may "
                 "only be late to say where it is; rerun with a longer --deadline if the nodes are merely slow"))
        for r in stuck[:4]:
            _add_tail(diagnosis, outcome, rank_hosts[r], r)
    silent = [r for r in stuck if r not in outcome.seen_ranks()]
    named = {f.host for f in diagnosis.findings}
    if silent and CLUSTER_HOST not in named:
        by_host: dict[str, list[int]] = {}
        for r in silent:
            by_host.setdefault(rank_hosts[r], []).append(r)
        for host, ranks in by_host.items():
            if host in named:
                continue
            findings.append(Finding(
                "workload-ranks-silent", Severity.ERROR, Outcome.FAIL, host, workload,
                f"rank(s) {', '.join(map(str, ranks))} on {host} printed nothing the head received in "
                f"{outcome.duration_s:.0f}s: they never started or their output never got through (the node is "
                "down, frozen or cut off, or pdsh could not start them)", why,
                f"check {host}: ssh {host} true; clusterkit doctor HOSTFILE"))
            _add_tail(diagnosis, outcome, host, None)
    if not outcome.timed_out and not findings and not diagnosis.findings and not explained:
        code = outcome.returncode
        findings.append(Finding(
            "workload-failed", Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, workload,
            f"{workload} failed (launcher exit code {code}) without a recognised cause"
            + (f"; ranks not done: {', '.join(map(str, stuck[:16]))}" if stuck else ""),
            _CATEGORY_WHY["exit"], "read the log tails below"))
        for host in dict.fromkeys(rank_hosts[r] for r in stuck[:4]):
            _add_tail(diagnosis, outcome, host, None)
        if not stuck:
            _add_tail(diagnosis, outcome, None, None)
    return findings
