"""The flight recorder's rank hook, installed by ``clusterkit launch`` as ``sitecustomize.py`` in the job's
flight-recorder directory on every node and put first on the ranks' ``PYTHONPATH``.

In a rank (``RANK`` set) it turns torch's flight recorder on (unless the environment already set it) with
dumps to this directory, and starts a daemon thread that writes ``rank_<RANK>`` whenever the
``dump-request`` file here is newer than its last dump (polled once a second), and once more at exit.
The thread dumps while the main thread waits inside a collective: torch releases the GIL there. Any
other ``sitecustomize`` on the path still runs after this one. Standard library only (torch is imported
only once the job has imported it).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The directories whose ``sitecustomize`` already ran in this process. clusterkit's hooks (this one and
#: the stack hook) each run the next ``sitecustomize`` on the path; each skips those already run, so two
#: hooks never run each other in a circle and the user's own runs once.
RAN = sys.__dict__.setdefault("_clusterkit_sitecustomize_ran", set())
PREFIX = str(HERE / "rank_")
REQUEST = HERE / "dump-request"
#: Replaced by ``clusterkit launch`` when it writes this file (entries each rank keeps).
BUFFER_SIZE = "2000"
POLL_S = 1.0


def _environment() -> None:
    for key, value in (("TORCH_FR_BUFFER_SIZE", BUFFER_SIZE), ("TORCH_NCCL_TRACE_BUFFER_SIZE", BUFFER_SIZE),
                       ("TORCH_FR_DUMP_TEMP_FILE", PREFIX), ("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", PREFIX),
                       ("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")):
        os.environ.setdefault(key, value)


def _recording() -> bool:
    """torch.distributed is imported and initialised here (a dataloader worker has neither)."""
    dist = sys.modules.get("torch.distributed")
    try:
        return dist is not None and bool(dist.is_available() and dist.is_initialized())
    except Exception:
        return False


def dump(rank: str) -> bool:
    """Write this rank's trace (collectives, no stack frames) next to this file; False when there is none."""
    if not _recording():
        return False
    try:
        from torch._C import _distributed_c10d as c10d
        data: bytes = c10d._dump_fr_trace(True, False, False)  # type: ignore[attr-defined]
    except Exception:
        return False
    path = Path(os.environ.get("TORCH_FR_DUMP_TEMP_FILE", PREFIX) + rank)
    partial = path.with_name(path.name + ".partial")
    try:  # a full disk or a removed directory costs this dump, never the rank or the watcher
        partial.write_bytes(data)
        partial.replace(path)
    except OSError:
        return False
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _watch(rank: str) -> None:
    answered = _mtime(REQUEST)
    while True:
        asked = _mtime(REQUEST)
        with contextlib.suppress(Exception):  # the watcher outlives any one failed dump
            if asked > answered and dump(rank):
                answered = asked
        threading.Event().wait(POLL_S)


def _at_exit(rank: str) -> None:
    with contextlib.suppress(Exception):
        dump(rank)


def _chain() -> None:
    """Run the ``sitecustomize`` this one hides, if any."""
    import importlib.machinery
    import importlib.util

    others = [p for p in sys.path if Path(p or ".").resolve() not in RAN]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None or spec.origin == str(Path(__file__).resolve()):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def main() -> None:
    if HERE in RAN:
        return
    RAN.add(HERE)
    rank = os.environ.get("RANK")
    if rank is not None and os.environ.get("CLUSTERKIT_FLIGHT_RECORDER", "1") != "0":
        _environment()
        threading.Thread(target=_watch, args=(rank,), name="clusterkit-flightrec", daemon=True).start()
        atexit.register(_at_exit, rank)
    try:
        _chain()
    except Exception as exc:  # another sitecustomize's failure is reported, never the job's end
        print(f"clusterkit flight recorder: the other sitecustomize failed: {exc}", file=sys.stderr)


if __name__ == "sitecustomize":
    main()
