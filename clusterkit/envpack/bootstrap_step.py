"""Bootstrap step ``env-push``: the training env (``--python``'s env) on every node, the same as the head's.

Check first, on every node in parallel: does ``PREFIX/bin/python`` start there, with the head's package
set (hashed as ``clusterkit doctor`` hashes it, plus ``conda-meta``)? Only where it does not: pack the env
once on the head (an archive of the same env, unchanged since, is reused from ~/.cache/clusterkit/envpack),
push it to those nodes (pipelined relay, checksums, unpack at the same path) and verify. A dry run only
checks. A rerun finds every node matching and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clusterkit.bootstrap.context import CHANGED, FAILED, OK, WOULD_CHANGE, BootstrapContext, NodeOutcome, StepReport
from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.cluster import SshReach, Target, open_nodes
from clusterkit.cluster.remote import connect
from clusterkit.envpack.pack import (
    Manifest,
    PackOptions,
    env_kind,
    manifest_path,
    node_env_command,
    pack_env,
    parse_node_env_output,
    tree_size,
    verify_here,
)
from clusterkit.envpack.push import FAILED as PUSH_FAILED
from clusterkit.envpack.push import INSTALLED, PushOptions, push_env
from clusterkit.errors import ClusterkitError, UsageError

CACHE_DIR = Path("~/.cache/clusterkit/envpack")


def _package_set(found: dict[str, Any]) -> tuple[Any, Any]:
    return (found.get("python_packages") or {}).get("sha256"), found.get("conda")


def cached_archive(prefix: Path, cache: Path) -> tuple[Path, Manifest] | None:
    """An archive of ``prefix`` in ``cache`` whose env has not changed since it was packed."""
    _, _, fingerprint = tree_size(prefix)
    for candidate in sorted(cache.glob(f"{prefix.name}-*.tar.zst.json"), key=lambda p: p.stat().st_mtime,
                            reverse=True):
        try:
            manifest = Manifest.load(candidate)
        except UsageError:
            continue
        archive = candidate.with_name(candidate.name[:-len(".json")])
        # A cut-short archive (a pack interrupted, a disk that filled) is packed again, not pushed.
        if manifest.prefix == str(prefix) and manifest.fingerprint == fingerprint and archive.is_file() \
                and archive.stat().st_size == manifest.size and manifest_path(archive) == candidate:
            return archive, manifest
    return None


def env_push(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """The training env at the same path on every node, with the head's package set."""
    if not ctx.python_named:
        return StepReport(spec, note="no training env named (--python): nothing to ship (clusterkit's own "
                                     "interpreter is not one)")
    prefix = Path(ctx.python).absolute().parent.parent
    try:
        kind = env_kind(prefix)
    except UsageError:
        return StepReport(spec, note=f"{ctx.python} is not in a conda env or venv: nothing to ship")
    try:
        head = verify_here(prefix, imports=(), timeout_s=spec.timeout_s)
    except ClusterkitError as exc:
        return StepReport(spec, note=f"the head's env cannot be checked: {exc}")
    wanted = _package_set(head)
    python = f"{prefix}/bin/python"

    def check(host: str) -> NodeOutcome:
        with connect(host, ctx.settings) as conn:
            result = conn.run(node_env_command(python, {"op": "verify", "imports": []}, isolated_site=False),
                              hide=True, warn=True, timeout=spec.timeout_s)
        if result.exited == 127 or "No such file" in str(result.stderr):
            return NodeOutcome(WOULD_CHANGE, [f"{python} is missing"])
        try:
            found = parse_node_env_output(str(result.stdout), host)
        except ClusterkitError:
            return NodeOutcome(WOULD_CHANGE, [f"{python} does not run: {str(result.stderr).strip()[-120:]}"])
        if _package_set(found) == wanted:
            return NodeOutcome(OK, ["same package set as the head"])
        return NodeOutcome(WOULD_CHANGE, ["package set differs from the head's"])

    report = ctx.per_node(spec, check)
    differ = [h for h, o in report.outcomes.items() if o.status == WOULD_CHANGE]
    if not differ or ctx.dry_run:
        for host in differ:
            report.outcomes[host].actions.append(f"would pack {prefix} ({kind}) and push it")
        ctx.env_installs.update(differ)
        return report
    cache = CACHE_DIR.expanduser()
    try:
        found = cached_archive(prefix, cache)
        archive, manifest = found if found else pack_env(prefix, PackOptions(output_dir=cache))
    except ClusterkitError as exc:
        for host in differ:
            report.outcomes[host] = NodeOutcome(
                FAILED, error=f"{python} differs here, and the head's env cannot be packed: {exc}",
                fix=f"fix the env, then rerun (check with: clusterkit env pack {prefix})")
        return report
    with open_nodes(Target(ctx.hosts, SshReach(ctx.settings))) as nodes:
        pushed = push_env(archive, manifest, nodes, PushOptions(unpack_timeout_s=spec.timeout_s), hosts=differ)
    for host in differ:
        result = pushed.nodes[host]
        if result.status == PUSH_FAILED:
            report.outcomes[host] = NodeOutcome(FAILED, result.actions, error=result.error, fix=result.fix)
        else:
            status = CHANGED if result.status == INSTALLED else OK
            report.outcomes[host] = NodeOutcome(status, result.actions)
            ctx.env_installs.add(host)
    report.note = f"{manifest.archive} ({manifest.size / 1e6:.1f} MB){' reused' if found else ' packed'}"
    return report
