"""A few ZeRO training steps on a tiny model, started by DeepSpeed's own launcher.

``deepspeed --num_gpus 1 clusterkit/workloads/scripts/zero_smoke.py --steps 2`` (or ``--hostfile H`` across
nodes) proves that DeepSpeed can initialise its distributed backend, partition optimizer state and
step on these nodes.
It uses torch's AdamW so no DeepSpeed op has to be JIT-compiled (that takes minutes); bf16 on CUDA,
fp32 with gloo on CPU. Runs inside the training env (torch + DeepSpeed), not clusterkit's: it imports
nothing from clusterkit. Rank 0 prints ``ZERO SMOKE OK`` last on success.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import sys
import time
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", "0")),
                        help="set by the DeepSpeed launcher")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
    # --deepspeed_config FILE (as `clusterkit launch --deepspeed-config` passes it) replaces the built-in config.
    deepspeed.add_config_arguments(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    accelerator = get_accelerator()
    on_gpu = accelerator.device_name() == "cuda"
    deepspeed.init_distributed()
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": args.stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": on_gpu},
        "steps_per_print": 1,
    }
    if args.deepspeed_config:
        with open(args.deepspeed_config, encoding="utf-8") as file:
            config = json.load(file)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    dtype = next(engine.module.parameters()).dtype
    micro_batch = engine.train_micro_batch_size_per_gpu()
    print(f"zero smoke: accelerator {accelerator.device_name()}, device {engine.device}, dtype {dtype}, "
          f"stage {engine.zero_optimization_stage()}, micro batch {micro_batch}, world size {engine.world_size}",
          flush=True)
    losses = []
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        inputs = torch.randn(micro_batch, 256, device=engine.device).to(dtype)
        loss = engine(inputs).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        print(f"zero smoke: step {step} loss {losses[-1]:.5f} ({time.perf_counter() - started:.3f} s)", flush=True)
    if not all(torch.isfinite(torch.tensor(losses))):
        raise SystemExit(f"zero smoke: non-finite loss {losses}")
    if on_gpu:
        print(f"zero smoke: peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB", flush=True)
    if hasattr(engine, "destroy"):
        engine.destroy()
    torch.distributed.barrier()
    # Without an explicit teardown gloo sometimes aborts at exit ("terminate called without an active
    # exception"), which the launcher reports as a failed rank.
    torch.distributed.destroy_process_group()
    if engine.global_rank == 0:
        print("ZERO SMOKE OK", flush=True)


if __name__ == "__main__":
    main()
    # Even after the teardown above a rank that finished cleanly can abort in C++ destructors at exit
    # (seen on a 3-node CPU run, 1 launch in ~30): leave without them.
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)  # what C extensions printed, still in libc's buffer
    os._exit(0)
