"""What the installed DeepSpeed itself says about the keys: unknown, invalid, removed, ignored, deprecated."""

from __future__ import annotations

from collections.abc import Iterator

from clusterkit.core.findings import NotApplicable, Problem, Severity
from clusterkit.dsconfig.introspect import DeepSpeedVerdict, ParseIssue
from clusterkit.dsconfig.load import dotted
from clusterkit.dsconfig.rules import CheckInput, rule
from clusterkit.node.facts import Unavailable

#: Fixes for DeepSpeed messages whose remedy is not in the message itself.
_FIX_FOR_MESSAGE = {
    "Partial offloading only supported for ZeRO Stage 3": "set zero_optimization.stage to 3, or "
                                                          "offload_optimizer.ratio to 1.0",
    "Cannot provide deprecated parameter": "keep only the new key (the message names both)",
    "is only supported with ZeRO Stage 1, 2, or 3": "set zero_optimization.stage to 1, 2 or 3",
    "compute_grad_norm=false is supported only with ZeRO Stage 1 or 2": "remove compute_grad_norm",
}


def _verdict(check: CheckInput) -> DeepSpeedVerdict:
    if isinstance(check.deepspeed, Unavailable):
        raise NotApplicable(f"DeepSpeed's parser unavailable: {check.deepspeed.reason}")
    return check.deepspeed


def _issues(check: CheckInput, *kinds: str) -> list[ParseIssue]:
    return [issue for issue in _verdict(check).issues if issue.kind in kinds]


def _did_you_mean(issue: ParseIssue) -> tuple[str, str | None]:
    if not issue.suggestions:
        return "", None
    parent = dotted(issue.path[:-1])
    target = f"{parent}.{issue.suggestions[0]}" if parent else issue.suggestions[0]
    return f"; did you mean {issue.suggestions[0]!r}?", f"rename {dotted(issue.path)} to {target}"


@rule("unknown-key", Severity.ERROR, ["keys"],
      why="DeepSpeed's config models forbid unknown keys: deepspeed.initialize fails with a pydantic "
          "ValidationError ('Extra inputs are not permitted')",
      fix="rename the key to one DeepSpeed knows, or remove it")
def unknown_key(check: CheckInput) -> Iterator[Problem]:
    """Every key inside a validated section (zero_optimization, fp16, bf16...) is one DeepSpeed knows."""
    version = _verdict(check).version
    for issue in _issues(check, "unknown-key"):
        hint, fix = _did_you_mean(issue)
        yield Problem(f"{dotted(issue.path)}: not a key DeepSpeed {version} knows{hint}", path=issue.path, fix=fix)


@rule("ignored-key", Severity.WARNING, ["keys"],
      why="DeepSpeed silently ignores keys it does not read (at the top level and in plain sections such "
          "as activation_checkpointing or checkpoint): a typo there turns a feature off without a word",
      fix="rename the key to one DeepSpeed reads, or remove it")
def ignored_key(check: CheckInput) -> Iterator[Problem]:
    """No key that DeepSpeed would silently ignore."""
    verdict = _verdict(check)
    if not verdict.complete:
        raise NotApplicable("DeepSpeed's parser stopped early; ignored keys are judged on a complete parse")
    for issue in _issues(check, "ignored-key"):
        hint, fix = _did_you_mean(issue)
        yield Problem(f"{issue.message}{hint}", path=issue.path, fix=fix)


@rule("removed-key", Severity.ERROR, ["keys"],
      why="DeepSpeed refuses config blocks of features it has removed (DeepSpeedConfigError)",
      fix="remove the block (the message says what replaces it)")
def removed_key(check: CheckInput) -> Iterator[Problem]:
    """No block of a feature DeepSpeed has removed."""
    for issue in _issues(check, "removed-key"):
        yield Problem(f"{dotted(issue.path)}: {issue.message}", path=issue.path, fix=f"remove {dotted(issue.path)}")


@rule("deepspeed-rejects", Severity.ERROR, ["keys"],
      why="the installed DeepSpeed's own config parser refuses this value; deepspeed.initialize would fail",
      fix="change the value as DeepSpeed's message says")
def deepspeed_rejects(check: CheckInput) -> Iterator[Problem]:
    """DeepSpeed's own config parser accepts every value."""
    for issue in _issues(check, "invalid-value", "rejected"):
        fix = next((f for needle, f in _FIX_FOR_MESSAGE.items() if needle in issue.message), None)
        yield Problem(issue.message, path=issue.path, fix=fix)


@rule("deepspeed-warning", Severity.WARNING, ["keys"],
      why="DeepSpeed logs these while reading the config (deprecated keys, settings it overrides)",
      fix="follow DeepSpeed's message")
def deepspeed_warning(check: CheckInput) -> Iterator[Problem]:
    """DeepSpeed logs no warning while reading the config."""
    for issue in _issues(check, "warning"):
        yield Problem(f"DeepSpeed: {issue.message}", path=issue.path, severity=Severity.WARNING)
