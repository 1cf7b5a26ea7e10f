"""GPU health, every GPU of every node at once: memory bandwidth, bf16/fp16 matmul rate, pinned copies.

    deepspeed --hostfile H gpu_health.py

Each rank measures its own GPU (no collectives, so one broken GPU or NIC cannot hide the others):

- device memory bandwidth: a device-to-device copy of ``--mem-mib``, counted as read + write;
- matmul rate: ``--matmul-n`` square matrices in bf16 and fp16, 2 n^3 flops each;
- pinned host<->device copy rate: ``--copy-mib`` from pinned host memory to the GPU and back.

Each measurement is timed over ``--iters`` back-to-back runs after a warm-up, synchronised around;
the whole run is a few seconds per GPU. Every rank prints one ``@@ck-result@@`` line (kind
``gpu_health``); the head sets them against the GPU's specification and against the other GPUs.
Without CUDA it reports ``skipped`` unless ``--allow-cpu`` (the same measurements on the CPU, small,
to exercise the path on machines without a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload_io as wio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    wio.add_common_arguments(parser)
    parser.add_argument("--mem-mib", type=int, default=0, help="copy size (default 1024 on GPU, 32 on CPU)")
    parser.add_argument("--matmul-n", type=int, default=0, help="matrix size (default 8192 on GPU, 256 on CPU)")
    parser.add_argument("--copy-mib", type=int, default=256, help="pinned copy size (GPU only)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--allow-cpu", action="store_true", help="measure the CPU when there is no GPU")
    return parser.parse_args(argv)


class Timer:
    """Seconds per call of ``fn`` over ``iters`` calls, the device synchronised before and after."""

    def __init__(self, torch: Any, on_cuda: bool) -> None:
        self.torch = torch
        self.on_cuda = on_cuda

    def sync(self) -> None:
        if self.on_cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any], iters: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        started = time.perf_counter()
        for _ in range(iters):
            fn()
        self.sync()
        return (time.perf_counter() - started) / iters


def device_identity(torch: Any, device: Any, on_cuda: bool) -> dict[str, Any]:
    if not on_cuda:
        import platform

        return {"kind": "cpu", "name": platform.processor() or platform.machine(), "index": None}
    props = torch.cuda.get_device_properties(device)
    identity: dict[str, Any] = {"kind": "cuda", "name": props.name, "index": device.index,
                                "memory_bytes": int(props.total_memory),
                                "multiprocessors": int(props.multi_processor_count),
                                "capability": f"{props.major}.{props.minor}"}
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        identity["uuid"] = "GPU-" + str(uuid) if not str(uuid).startswith("GPU-") else str(uuid)
    for key in ("pci_domain_id", "pci_bus_id", "pci_device_id"):
        if hasattr(props, key):
            identity[key] = int(getattr(props, key))
    if all(k in identity for k in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        identity["bus_id"] = "%08X:%02X:%02X.0" % (identity["pci_domain_id"], identity["pci_bus_id"],  # noqa: UP031
                                                   identity["pci_device_id"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible:
        identity["visible_devices"] = visible
    return identity


def memory_bandwidth(torch: Any, timer: Timer, device: Any, nbytes: int, iters: int) -> float:
    """GB/s of a device-to-device copy, counting the read and the write."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src), iters)
    return 2 * nbytes / seconds / 1e9


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    on_cuda = torch.cuda.is_available()
    if on_cuda:
        torch.cuda.set_device(args.local_rank)
        device = torch.device("cuda", args.local_rank)
    else:
        device = torch.device("cpu")
    timer = Timer(torch, on_cuda)
    mem_mib = args.mem_mib or (1024 if on_cuda else 32)
    n = args.matmul_n or (8192 if on_cuda else 256)
    out: dict[str, Any] = {"device": device_identity(torch, device, on_cuda), "sizes": {
        "mem_mib": mem_mib, "matmul_n": n, "copy_mib": args.copy_mib if on_cuda else 0}, "measurements": {}}
    results = out["measurements"]

    wio.progress("memory bandwidth")
    results["memory_gbs"] = memory_bandwidth(torch, timer, device, mem_mib * 2 ** 20, args.iters)

    flops: dict[str, float] = {}
    for name in ("bfloat16", "float16"):
        dtype = getattr(torch, name)
        if not on_cuda and name == "float16":
            continue  # CPU half matmul is an emulation, not a health signal
        wio.progress(f"{name} matmul")
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        seconds = timer(lambda a=a, b=b: torch.matmul(a, b), args.iters)
        flops[name] = 2 * n ** 3 / seconds / 1e12
        del a, b
    results["matmul_tflops"] = flops

    if on_cuda:
        copy_bytes = args.copy_mib * 2 ** 20
        host = torch.empty(copy_bytes, dtype=torch.uint8).pin_memory()
        on_device = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
        wio.progress("pinned host to device")
        seconds = timer(lambda: on_device.copy_(host, non_blocking=True), args.iters)
        results["h2d_gbs"] = copy_bytes / seconds / 1e9
        wio.progress("pinned device to host")
        seconds = timer(lambda: host.copy_(on_device, non_blocking=True), args.iters)
        results["d2h_gbs"] = copy_bytes / seconds / 1e9
        del host, on_device
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    wio.tag_output()
    args = parse_args(argv)
    wio.progress("starting")
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        wio.result("gpu_health", {"local_rank": args.local_rank, "skipped": "no CUDA device visible to torch "
                                  f"{torch.__version__} (cuda {torch.version.cuda})"})
        wio.done()
        return 0
    report = measure(args)
    report["local_rank"] = args.local_rank
    report["seconds"] = time.perf_counter() - started
    wio.result("gpu_health", report)
    wio.done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
