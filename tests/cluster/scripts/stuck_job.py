"""A small data-parallel job (torch.distributed over gloo, CPU, started by DeepSpeed's launcher) for the
cluster tests of ``clusterkit stacks``, with one fault planted on one rank (``--fault``, ``--culprit``):

- ``none``: healthy; every step a forward and a backward of varying length, then an all_reduce;
- ``sleep``: the culprit sleeps before a step's all_reduce;
- ``skip``: the culprit skips a step's all_reduce and waits in a barrier (a desync);
- ``dataloader``: the culprit's DataLoader worker never returns a batch;
- ``lock``: the culprit waits on a lock another of its threads holds for good;
- ``straggler``: the culprit computes several times longer every step (slow, never stuck).

Rank 0 prints ``ready`` once the faulty step is reached. Every rank ends itself after ``--lifetime``
seconds (a hung rank cannot end any other way), so no test needs to hunt processes down.
"""

import argparse
import os
import random
import threading
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

FAULT_STEP = 3
LOCK = threading.Lock()


class Batches(Dataset):  # type: ignore[type-arg]
    def __init__(self, stuck: bool) -> None:
        self.stuck = stuck

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.stuck and index >= FAULT_STEP:
            time.sleep(3600)  # a worker stuck on its storage
        return torch.ones(256)


def forward(seconds: float) -> None:
    time.sleep(seconds)


def backward(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def hold_the_lock_for_good() -> None:
    LOCK.acquire()
    time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", default="none",
                        choices=("none", "sleep", "skip", "dataloader", "lock", "straggler"))
    parser.add_argument("--culprit", type=int, default=1)
    parser.add_argument("--lifetime", type=float, default=120.0)
    parser.add_argument("--tag", default="", help="a word in the command line to find the job's processes by")
    parser.add_argument("--local_rank", type=int, default=0)  # DeepSpeed's launcher passes it
    args = parser.parse_args()
    threading.Timer(args.lifetime, lambda: os._exit(0)).start()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    culprit = rank == args.culprit
    loader = iter(DataLoader(Batches(culprit and args.fault == "dataloader"), batch_size=1,
                             num_workers=1 if args.fault == "dataloader" else 0))
    grads = torch.ones(1024)
    step = 0
    while True:
        step += 1
        batch = next(loader)
        forward(random.uniform(0.01, 0.05) + float(batch.sum()) * 0)
        backward(random.uniform(0.01, 0.03) * (8 if culprit and args.fault == "straggler" else 1))
        if step == FAULT_STEP and rank == 0:
            print(f"ready at step {step}", flush=True)
        if step == FAULT_STEP and culprit and args.fault == "sleep":
            time.sleep(3600)  # fault: sleep
        if step == FAULT_STEP and culprit and args.fault == "lock":
            threading.Thread(target=hold_the_lock_for_good, daemon=True).start()
            time.sleep(0.2)
            with LOCK:  # fault: lock
                pass
        if step == FAULT_STEP and culprit and args.fault == "skip":
            dist.barrier()  # fault: skip
            continue
        dist.all_reduce(grads)


if __name__ == "__main__":
    main()
