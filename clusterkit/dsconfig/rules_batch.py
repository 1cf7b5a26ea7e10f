"""Batch arithmetic and ``"auto"``: what DeepSpeed derives, what the HF Trainer fills, what breaks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from clusterkit.core.findings import KeyPath, NotApplicable, Problem, Severity
from clusterkit.dsconfig.hf_auto import AUTO_SOURCES, UNFILLED, auto_paths
from clusterkit.dsconfig.load import dotted
from clusterkit.dsconfig.rules import CheckInput, Runner, is_auto, rule, whole_number
from clusterkit.dsconfig.topology import Parallelism, data_parallel_size

TB, MB, GAS = "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"

#: What DeepSpeed does with a literal "auto" that nobody replaced, by where it sits.
_AUTO_CRASH = {
    TB: "DeepSpeed's batch check fails: TypeError: '>' not supported between instances of 'str' and 'int'",
    MB: "DeepSpeed's batch check fails: TypeError: '>' not supported between instances of 'str' and 'int'",
    GAS: "DeepSpeed's batch check fails: TypeError: '>' not supported between instances of 'str' and 'int'",
    "gradient_clipping": "the engine compares it with 0.0: TypeError: '>' not supported between instances "
                         "of 'str' and 'float'",
}


def auto_consequence(path: KeyPath) -> str:
    """What plain DeepSpeed does with the string ``"auto"`` at ``path``."""
    key = dotted(path)
    if key in _AUTO_CRASH:
        return _AUTO_CRASH[key]
    if path[:1] in (("optimizer",), ("scheduler",)):
        return f"the string 'auto' is passed to the {path[0]} constructor, which fails on it"
    return ("DeepSpeed's config models drop \"auto\" and silently use their default instead"
            if len(path) > 1 else "DeepSpeed keeps the string 'auto' and fails where it uses the value")


def _source(path: KeyPath, runner: Runner) -> str:
    sources = AUTO_SOURCES.get(dotted(path))
    if sources is None:
        return "nobody fills it"
    hf, accelerate = sources
    if runner is Runner.HF_TRAINER:
        return f"HF Trainer: {hf}"
    if runner is Runner.ACCELERATE:
        return f"Accelerate: {accelerate}"
    return f"HF Trainer: {hf}; Accelerate: {accelerate}"


# ------------------------------------------------------------------------------------------ batch


def _batch_values(check: CheckInput) -> tuple[Any, Any, Any]:
    return check.value(TB), check.value(MB), check.value(GAS)


def _parallel(check: CheckInput) -> Parallelism:
    sp = check.value("sequence_parallel_size", default=1)
    sequence = sp if whole_number(sp) and sp > 1 else 1
    return Parallelism(check.parallel.tensor, check.parallel.pipeline, sequence)


@rule("batch-arithmetic", Severity.ERROR, ["batch"],
      why="DeepSpeed asserts train_batch_size == train_micro_batch_size_per_gpu x "
          "gradient_accumulation_steps x world size before the first step",
      fix="give two of the three values and let DeepSpeed derive the third, or use \"auto\" with the "
          "HF Trainer")
def batch_arithmetic(check: CheckInput) -> Iterator[Problem]:
    """train_batch_size = micro batch x gradient accumulation x (data-parallel) world size."""
    tb, mb, gas = _batch_values(check)
    if any(is_auto(v) for v in (tb, mb, gas)):
        raise NotApplicable("batch sizes are \"auto\": see the auto-* results for what they become")
    for key, value in ((TB, tb), (MB, mb), (GAS, gas)):
        if value is not None and (not whole_number(value) or value <= 0):
            yield Problem(f"{key} is {value!r}; DeepSpeed needs a whole number greater than 0", path=(key,),
                        fix=f"set {key} to a positive integer")
            return
    if tb is None and mb is None:
        yield Problem("neither train_batch_size nor train_micro_batch_size_per_gpu is set: DeepSpeed stops "
                    "with 'Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided'",
                    fix=f"set {MB} (and {GAS})")
        return
    if check.topology is None:
        raise NotApplicable("world size unknown: pass --hostfile or --world-size")
    world = check.topology.world_size
    parallel = _parallel(check)
    dp = data_parallel_size(world, parallel)
    if dp is None:
        yield Problem(f"world size {world} ({check.topology.source}) is not divisible by "
                    f"{parallel.describe()} = {parallel.model_parallel}", path=("sequence_parallel_size",),
                    fix="change the parallel sizes or the number of GPUs so they divide evenly")
        return
    label = "world size" if parallel.model_parallel == 1 else \
        f"data-parallel size ({world} ranks / {parallel.describe()})"
    yield from _derive_like_deepspeed(tb, mb, gas, dp, label)


def _derive_like_deepspeed(tb: int | None, mb: int | None, gas: int | None, world: int, label: str
                           ) -> Iterator[Problem]:
    """DeepSpeedConfig._set_batch_related_parameters, then _batch_assertion, explained."""
    if tb is not None and mb is not None and gas is not None:
        if tb != mb * gas * world:
            yield Problem(f"{TB} {tb} != {MB} {mb} x {GAS} {gas} x {label} {world} = {mb * gas * world}: "
                        f"DeepSpeed stops with 'train_batch_size is not equal to micro_batch_per_gpu * "
                        f"gradient_acc_step * world_size {tb} != {mb} * {gas} * {world}'", path=(TB,),
                        fix=_batch_fix(tb, mb, gas, world, change_tb=True))
        return
    if tb is not None and mb is not None:
        derived = tb // mb // world
        what, derived_key = f"{GAS} {derived}", GAS
        ok = derived > 0 and tb == mb * derived * world
        fix = _batch_fix(tb, mb, None, world, change_tb=True)
    elif tb is not None and gas is not None:
        derived = tb // world // gas
        what, derived_key = f"{MB} {derived}", MB
        ok = derived > 0 and tb == derived * gas * world
        fix = _batch_fix(tb, None, gas, world, change_tb=True)
    elif tb is not None:
        derived = tb // world
        what, derived_key = f"{MB} {derived} (and {GAS} 1)", MB
        ok = derived > 0 and tb == derived * world
        fix = f"set {TB} to a multiple of the {label} {world}, e.g. {max(1, derived) * world}"
    else:
        return  # micro batch given (with or without GAS): DeepSpeed derives train_batch_size exactly
    if ok:
        return
    if derived <= 0:
        stop = f"'{'Gradient accumulation steps' if derived_key == GAS else 'Micro batch size per gpu'}: " \
               f"0 has to be greater than 0'"
    else:
        stop = "'train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size'"
    yield Problem(f"{TB} {tb} with {label} {world}: DeepSpeed derives {what} by integer division and "
                f"stops with {stop}", path=(TB,), fix=fix)


def _batch_fix(tb: int, mb: int | None, gas: int | None, world: int, change_tb: bool) -> str:
    options = []
    if mb is not None and gas is not None and change_tb:
        options.append(f"set {TB} to {mb * gas * world}")
    if mb is not None and tb % (mb * world) == 0 and tb // (mb * world) > 0:
        options.append(f"set {GAS} to {tb // (mb * world)}")
    if gas is not None and tb % (gas * world) == 0 and tb // (gas * world) > 0:
        options.append(f"set {MB} to {tb // (gas * world)}")
    if mb is not None and gas is None:
        options.append(f"set {TB} to a multiple of {mb} x {world} = {mb * world}")
    if gas is not None and mb is None:
        options.append(f"set {TB} to a multiple of {gas} x {world} = {gas * world}")
    options.append(f"or remove {TB} and let DeepSpeed derive it")
    return "; ".join(options)


# ------------------------------------------------------------------------------------------- auto


def _concrete(path: KeyPath) -> str:
    return "true or false" if path[-1] == "enabled" else "a number"


@rule("auto-needs-trainer", Severity.ERROR, ["auto", "hf"],
      why="only the HF Trainer and Accelerate replace \"auto\"; deepspeed.initialize takes it literally",
      fix="write numbers instead of \"auto\", or launch through the HF Trainer / Accelerate")
def auto_needs_trainer(check: CheckInput) -> Iterator[Problem]:
    """No "auto" values when DeepSpeed reads the config itself (--runner deepspeed)."""
    if check.runner is not Runner.DEEPSPEED:
        raise NotApplicable(f"runner is {check.runner.value}; this rule is for --runner deepspeed")
    for path in auto_paths(check.config.data):
        yield Problem(f"{dotted(path)} is \"auto\": {auto_consequence(path)}", path=path,
                    fix=f"set {dotted(path)} to {_concrete(path)}")


@rule("auto-runner-unknown", Severity.WARNING, ["auto", "hf"],
      why="\"auto\" works only when the HF Trainer or Accelerate fills it in; plain DeepSpeed fails on it",
      fix="add '-- train.py --your-trainer-args' to see what \"auto\" becomes, or --runner deepspeed if no "
          "Trainer is involved")
def auto_runner_unknown(check: CheckInput) -> Iterator[Problem]:
    """"auto" values are checked against the launch that fills them (trainer args or --runner)."""
    if check.runner is not Runner.UNKNOWN:
        raise NotApplicable(f"runner is {check.runner.value}")
    paths = auto_paths(check.config.data)
    if paths:
        shown = ", ".join(dotted(p) for p in paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
        yield Problem(f"{len(paths)} value{'s' * (len(paths) != 1)} are \"auto\" ({shown}): only the HF Trainer "
                    "or Accelerate fill them in, plain DeepSpeed fails on them; the launch arguments are "
                    "unknown, so what they become was not checked", path=paths[0])


@rule("auto-filled", Severity.INFO, ["auto", "hf"],
      why="shows the numbers DeepSpeed will really get, so the batch and memory plan can be checked",
      fix="nothing to do; write a number instead of \"auto\" to pin a value")
def auto_filled(check: CheckInput) -> Iterator[Problem]:
    """What each "auto" value becomes, and who fills it."""
    if check.runner is Runner.HF_TRAINER and check.hf is not None:
        for fill in check.hf.fills:
            yield Problem(f"{dotted(fill.path)} \"auto\" -> {fill.value!r} (from {fill.source})", path=fill.path)
        for fill in check.hf.runtime:
            yield Problem(f"{dotted(fill.path)} \"auto\" is filled at run time from {fill.source}", path=fill.path)
    elif check.runner in (Runner.ACCELERATE, Runner.UNKNOWN):
        for path in auto_paths(check.config.data):
            sources = AUTO_SOURCES.get(dotted(path))
            if sources and not (check.runner is Runner.ACCELERATE and sources[1].startswith(UNFILLED)):
                yield Problem(f"{dotted(path)} \"auto\" is filled by {_source(path, check.runner)}", path=path)
    else:
        raise NotApplicable("DeepSpeed reads the config itself (--runner deepspeed)")


@rule("auto-unfilled", Severity.ERROR, ["auto", "hf"],
      why="a key nobody fills reaches DeepSpeed as the string \"auto\"",
      fix="write a number (or true/false) for it")
def auto_unfilled(check: CheckInput) -> Iterator[Problem]:
    """Every "auto" value is one the HF Trainer or Accelerate actually fills."""
    if check.runner is Runner.HF_TRAINER and check.hf is not None:
        remaining = check.hf.remaining_auto()
        who = "the HF Trainer"
    elif check.runner is Runner.ACCELERATE:
        remaining = [p for p in auto_paths(check.config.data)
                     if AUTO_SOURCES.get(dotted(p), ("", UNFILLED))[1].startswith(UNFILLED)]
        who = "Accelerate"
    else:
        raise NotApplicable(f"runner is {check.runner.value}")
    for path in remaining:
        yield Problem(f"{dotted(path)} is \"auto\" but {who} does not fill it: {auto_consequence(path)}", path=path,
                    fix=f"set {dotted(path)} to {_concrete(path)}")


@rule("hf-mismatch", Severity.ERROR, ["auto", "hf"],
      why="the HF Trainer compares every number it would have filled with TrainingArguments and refuses "
          "to start on a difference ('Please correct the following DeepSpeed config values that mismatch "
          "TrainingArguments values')",
      fix="set the value to \"auto\", or make the trainer argument agree")
def hf_mismatch(check: CheckInput) -> Iterator[Problem]:
    """Config numbers agree with the TrainingArguments the HF Trainer compares them with."""
    if check.runner is not Runner.HF_TRAINER or check.hf is None:
        raise NotApplicable("no HF Trainer arguments after '--'")
    for m in check.hf.mismatches:
        yield Problem(f"{dotted(m.path)} is {m.ds_value!r} but the HF Trainer computes {m.hf_value!r} from "
                    f"{m.hf_name}; it stops with: Please correct the following DeepSpeed config values "
                    f"that mismatch TrainingArguments values: {m.hf_line()}", path=m.path,
                    fix=f"set {dotted(m.path)} to \"auto\" (or to {m.hf_value!r})",
                    severity=Severity.ERROR)
