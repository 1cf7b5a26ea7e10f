"""ZeRO smoke suite: one tiny model trained a few steps under ZeRO 0, 1, 2, 3 and 3 + CPU offload.

    deepspeed --hostfile H zero_suite.py --build-only          # once, one rank per node: JIT ops
    deepspeed --hostfile H zero_suite.py --stages 0,1,2,3,3o   # every rank

Every stage starts from the same weights (one seed) and sees the same global batches, each rank
its own slice, so the global loss of each step must agree across stages within a tolerance (fp32:
1e-4 relative; bf16: 2e-2). Each stage then saves a checkpoint, loads it into a fresh engine whose
weights are compared with the live ones and which must take the same next step; for ZeRO 1-3 the
checkpoint is consolidated with DeepSpeed's zero_to_fp32 and compared with the live weights, and
ZeRO-3's 16-bit save (stage3_gather_16bit_weights_on_model_save) is compared as well. Checkpoints
go to node-local storage (``checkpoint.use_node_local_storage``); rank 0 gathers the other nodes'
shards over the process group before consolidating, so no shared filesystem is needed.

DeepSpeed JIT-compiles its ops (FusedAdam, CPUAdam for offload, the shared-memory comm op on CPU)
the first time they are used. ``--build-only`` builds them up front, once per node, into a
node-local cache (``--ops-cache``); the stages then only load them.

Runs inside the training env through DeepSpeed's launcher, imports nothing from clusterkit.
Rank 0 prints one ``@@ck-result@@`` line (kind ``zero_suite`` or ``zero_build`` per node).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload_io as wio

STAGES = {"0": (0, False), "1": (1, False), "2": (2, False), "3": (3, False), "3o": (3, True)}
STAGE_NAMES = {"0": "ZeRO-0", "1": "ZeRO-1", "2": "ZeRO-2", "3": "ZeRO-3", "3o": "ZeRO-3 + CPU offload"}
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    wio.add_common_arguments(parser)
    parser.add_argument("--stages", default="0,1,2,3,3o", help="comma-separated of " + ", ".join(STAGES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--ops-cache", default="auto",
                        help="TORCH_EXTENSIONS_DIR for DeepSpeed's JIT ops; auto: the env's own if set, else "
                             "{tmp}/clusterkit-{uid}/torch-extensions/<python, torch, device>")
    parser.add_argument("--checkpoint-dir", default="{tmp}/clusterkit-{uid}/zero-suite",
                        help="node-local checkpoint directory ({tmp}, {uid}, {user}, ~ expanded per node)")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--build-only", action="store_true", help="build the ops the stages need, then exit")
    return parser.parse_args(argv)


def ops_cache_dir(template: str) -> str:
    """The extensions directory, keyed by Python, torch and device so envs never share builds."""
    import torch

    if template == "auto":
        if os.environ.get("TORCH_EXTENSIONS_DIR"):
            return os.environ["TORCH_EXTENSIONS_DIR"]
        template = "{tmp}/clusterkit-{uid}/torch-extensions"
    device = "cu" + torch.version.cuda.replace(".", "") if torch.version.cuda else "cpu"
    key = f"py{sys.version_info[0]}{sys.version_info[1]}_{device}_torch{torch.__version__.split('+')[0]}"
    return str(Path(wio.expand_path(template)) / key)


def needed_builders(stages: list[str], on_cuda: bool) -> list[str]:
    """The op builders DeepSpeed will JIT-compile for these stages on this accelerator."""
    names = [] if on_cuda else ["ShareMemCommBuilder"]  # deepspeed.comm on CPU, at init_distributed
    if any(not STAGES[s][1] for s in stages):
        names.append("FusedAdamBuilder")  # the "AdamW" optimizer without offload
    if any(STAGES[s][1] for s in stages):
        names.append("CPUAdamBuilder")  # optimizer offload
    return names


def build_ops(stages: list[str], cache: str) -> dict[str, Any]:
    """Load (building when missing) each op; per op: seconds, whether it was already built, or the error."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    ops = []
    for name in needed_builders(stages, accelerator.device_name() == "cuda"):
        builder = accelerator.create_op_builder(name)
        if builder is None:
            ops.append({"builder": name, "ok": False, "error": "not available on this accelerator"})
            continue
        op_name = getattr(builder, "name", name)
        cached = any(Path(cache, op_name).glob("*.so"))
        wio.progress(f"building {op_name}" if not cached else f"loading {op_name}")
        started = time.perf_counter()
        try:
            builder.load(verbose=False)
            ops.append({"builder": name, "op": op_name, "ok": True, "cached": cached,
                        "seconds": time.perf_counter() - started})
        except Exception as exc:  # the log above it has the compiler's words
            traceback.print_exc()
            ops.append({"builder": name, "op": op_name, "ok": False, "cached": cached,
                        "seconds": time.perf_counter() - started, "error": f"{type(exc).__name__}: {exc}"})
    return {"cache": cache, "ops": ops}


class Suite:
    """The stages, run one after the other in this process."""

    def __init__(self, args: argparse.Namespace, watch: wio.Stopwatch) -> None:
        import datetime

        with watch("import"):
            import deepspeed
            import torch
            import torch.distributed as dist
            from deepspeed.accelerator import get_accelerator
        self.deepspeed, self.torch, self.dist = deepspeed, torch, dist
        self.args = args
        self.on_cuda = get_accelerator().device_name() == "cuda"
        if self.on_cuda:
            torch.cuda.set_device(args.local_rank)
        with watch("init_distributed"):
            deepspeed.init_distributed(timeout=datetime.timedelta(seconds=args.timeout_s))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.precision = "bf16" if self.on_cuda else "fp32"
        self.device = torch.device("cuda", args.local_rank) if self.on_cuda else torch.device("cpu")

    # -------------------------------------------------------------------------------- pieces

    def config(self, stage: int, offload: bool) -> dict[str, Any]:
        zero: dict[str, Any] = {"stage": stage}
        if stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
            zero["stage3_param_persistence_threshold"] = 0  # partition even this tiny model's parameters
        if offload:
            zero["offload_optimizer"] = {"device": "cpu"}
            zero["offload_param"] = {"device": "cpu"}
        return {"train_micro_batch_size_per_gpu": self.args.micro_batch, "gradient_accumulation_steps": 1,
                "optimizer": {"type": "AdamW", "params": {"lr": self.args.lr, "weight_decay": 0.0}},
                "zero_optimization": zero, "bf16": {"enabled": self.precision == "bf16"},
                "checkpoint": {"use_node_local_storage": True}, "steps_per_print": 10 ** 6,
                "wall_clock_breakdown": False}

    def model(self, seed: int) -> Any:
        torch = self.torch
        torch.manual_seed(seed)
        h = self.args.hidden
        return torch.nn.Sequential(torch.nn.Linear(h, 4 * h), torch.nn.Tanh(), torch.nn.Linear(4 * h, h))

    def batch(self, step: int) -> tuple[Any, Any]:
        """This rank's slice of global batch ``step`` (the same for every stage)."""
        torch = self.torch
        g = torch.Generator().manual_seed(self.args.seed * 1000 + step)
        rows = self.args.micro_batch * self.world
        x = torch.randn(rows, self.args.hidden, generator=g)
        y = torch.sin(x)
        mine = slice(self.rank * self.args.micro_batch, (self.rank + 1) * self.args.micro_batch)
        return x[mine].to(self.device), y[mine].to(self.device)

    def step(self, engine: Any, step: int) -> float:
        x, y = self.batch(step)
        dtype = next(engine.module.parameters()).dtype
        loss = (engine(x.to(dtype)).float() - y).pow(2).mean()
        engine.backward(loss)
        engine.step()
        total = loss.detach().clone().to(self.device)
        self.dist.all_reduce(total)
        return float(total.item()) / self.world

    def full_weights(self, engine: Any) -> dict[str, Any]:
        """Every parameter in full, in the module's dtype (gathered from the partitions under ZeRO-3)."""
        params = dict(engine.module.named_parameters())
        if engine.zero_optimization_stage() == 3:
            with self.deepspeed.zero.GatheredParameters(list(params.values())):
                return {n: p.detach().float().cpu().clone() for n, p in params.items()}
        return {n: p.detach().float().cpu().clone() for n, p in params.items()}

    @staticmethod
    def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
        keys = set(a) | set(b)
        if set(a) != set(b):
            return float("inf")
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in keys) if keys else 0.0

    def gather_shards(self, tag_dir: Path) -> int:
        """Copy every rank's checkpoint files that rank 0's node lacks onto it; how many were copied."""
        mine = []
        if tag_dir.is_dir():
            for path in sorted(tag_dir.iterdir()):
                if f"_rank_{self.rank}_" in path.name:
                    mine.append((path.name, path.read_bytes()))
        gathered: list[Any] = [None] * self.world if self.rank == 0 else []
        self.dist.gather_object(mine, gathered if self.rank == 0 else None, dst=0)
        copied = 0
        if self.rank == 0:
            for files in gathered:
                for name, data in files or []:
                    target = tag_dir / name
                    if not target.exists():
                        target.write_bytes(data)
                        copied += 1
        return copied

    # -------------------------------------------------------------------------------- a stage

    def run_stage(self, key: str, base_dir: Path) -> dict[str, Any]:
        deepspeed = self.deepspeed
        stage, offload = STAGES[key]
        out: dict[str, Any] = {"stage": key, "name": STAGE_NAMES[key]}
        watch = wio.Stopwatch()
        wio.progress(f"{STAGE_NAMES[key]}: initialize")
        config = self.config(stage, offload)
        model = self.model(self.args.seed)
        with watch("initialize"):
            engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        losses, step_seconds = [], []
        for step in range(self.args.steps):
            wio.progress(f"{STAGE_NAMES[key]}: step {step + 1}/{self.args.steps}")
            started = time.perf_counter()
            losses.append(self.step(engine, step))
            step_seconds.append(time.perf_counter() - started)
        out["losses"], out["step_seconds"] = losses, step_seconds
        live = self.full_weights(engine)
        ckpt = base_dir / f"stage-{key}"
        tag = f"step{self.args.steps}"
        wio.progress(f"{STAGE_NAMES[key]}: checkpoint")
        with watch("checkpoint"):
            engine.save_checkpoint(str(ckpt), tag=tag)
            if stage == 3:  # before any further step: it must hold the weights of ``live``
                engine.save_16bit_model(str(ckpt / "16bit"), "model.bin")
            self.dist.barrier()
            fresh = self.model(self.args.seed + 1)  # different weights: only a real load makes them equal
            loaded, _, _, _ = deepspeed.initialize(model=fresh, model_parameters=fresh.parameters(), config=config)
            load_path, _ = loaded.load_checkpoint(str(ckpt), tag=tag)
            reloaded = self.full_weights(loaded)
            next_live = self.step(engine, self.args.steps)
            next_loaded = self.step(loaded, self.args.steps)
        out["checkpoint"] = {"loaded": load_path is not None, "max_abs_diff": self.max_diff(live, reloaded),
                             "next_loss_live": next_live, "next_loss_loaded": next_loaded}
        if stage >= 1:
            with watch("zero_to_fp32"):
                copied = self.gather_shards(ckpt / tag)
                if self.rank == 0:
                    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
                    out["zero_to_fp32"] = {"max_abs_diff": self.max_diff(live, consolidated),
                                           "shards_copied_to_rank0": copied}
        if stage == 3 and self.rank == 0:
            import torch

            saved = torch.load(str(ckpt / "16bit" / "model.bin"), map_location="cpu", weights_only=True)
            out["save_16bit"] = {"max_abs_diff": self.max_diff(live, dict(saved.items()))}
        self.dist.barrier()
        for used in (engine, loaded):
            if hasattr(used, "destroy"):
                used.destroy()
        del engine, loaded, used
        gc.collect()
        out["seconds"] = watch.seconds
        return out

    def cleanup(self, base_dir: Path) -> None:
        import shutil

        self.dist.barrier()
        if wio.local_rank() == 0 and not self.args.keep_checkpoints:
            shutil.rmtree(base_dir, ignore_errors=True)


def compare_losses(stages: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Each stage's largest relative loss difference from the first stage that trained."""
    reference = next((s for s in stages if s.get("losses")), None)
    if reference is None:
        return {"reference": None, "tolerance": tolerance, "agree": False}
    verdict: dict[str, Any] = {"reference": reference["stage"], "tolerance": tolerance, "agree": True, "stages": {}}
    for stage in stages:
        losses = stage.get("losses")
        if not losses or len(losses) != len(reference["losses"]):
            verdict["stages"][stage["stage"]] = None
            verdict["agree"] = False
            continue
        worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference["losses"]))
        verdict["stages"][stage["stage"]] = worst
        verdict["agree"] = verdict["agree"] and worst <= tolerance
    return verdict


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    wio.tag_output()
    args = parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"zero_suite: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    watch = wio.Stopwatch()
    with watch("import"):
        import torch  # noqa: F401  (for ops_cache_dir; the suite's own import is timed again, cheaply)
    cache = ops_cache_dir(args.ops_cache)
    os.environ["TORCH_EXTENSIONS_DIR"] = cache  # before DeepSpeed builds or loads anything
    if args.build_only:
        report = build_ops(stages, cache)
        wio.result("zero_build", report)
        wio.done()
        return 0 if all(op["ok"] for op in report["ops"]) else 1
    wio.progress("starting")
    suite = Suite(args, watch)
    base = Path(wio.expand_path(args.checkpoint_dir)) / (args.ck_run_id or "run")
    results = []
    for key in stages:
        try:
            results.append(suite.run_stage(key, base))
        except Exception as exc:
            traceback.print_exc()
            results.append({"stage": key, "name": STAGE_NAMES[key], "error": f"{type(exc).__name__}: {exc}"})
    suite.cleanup(base)
    verdict = compare_losses(results, TOLERANCE[suite.precision])
    if suite.rank == 0:
        for stage in results:
            losses = ", ".join(f"{v:.6f}" for v in stage.get("losses", []))
            print(f"zero suite: {stage['name']}: " + (f"losses {losses}" if losses else f"FAILED {stage.get('error')}"),
                  flush=True)
        wio.result("zero_suite", {"world_size": suite.world, "precision": suite.precision, "steps": args.steps,
                                  "ops_cache": cache, "stages": results, "loss_agreement": verdict,
                                  "seconds": dict(watch.seconds, total=time.perf_counter() - started)})
    suite.dist.barrier()
    suite.dist.destroy_process_group()
    wio.done()
    return 0 if verdict["agree"] and not any("error" in s for s in results) else 1


if __name__ == "__main__":
    wio.exit_process(main())
