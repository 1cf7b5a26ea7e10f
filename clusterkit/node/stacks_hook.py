"""clusterkit's stack hook, put on every node by ``clusterkit launch`` as ``sitecustomize.py`` in a
directory first on the ranks' ``PYTHONPATH`` (``.../clusterkit-UID/stacks-hook-DIGEST/``).

In a training rank (``RANK`` and ``LOCAL_RANK`` set) it registers :mod:`faulthandler` for SIGUSR2 with a
per-rank file (``.../clusterkit-UID/stacks/HOST-PID.txt``): on the signal, the rank's own C handler
appends every thread's Python stack there, even while the rank blocks inside a collective. ``clusterkit
stacks`` sends the signal and reads the file where it may not read the rank with py-spy (no ptrace
rights). Anything else (the launcher's own processes) is left alone, and the sitecustomize this one
shadows (a distribution's) still runs. It never raises: a rank must start whatever happens here.

Stdlib only, Python 3.8 syntax.
"""

import contextlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The directories whose ``sitecustomize`` already ran in this process (see the flight recorder's hook:
#: each clusterkit hook skips those, so two never run each other in a circle).
RAN = sys.__dict__.setdefault("_clusterkit_sitecustomize_ran", set())


def _install() -> None:
    if "RANK" not in os.environ or "LOCAL_RANK" not in os.environ:
        return
    import faulthandler
    import signal
    import socket

    if signal.getsignal(signal.SIGUSR2) not in (signal.SIG_DFL, None):
        return  # the parent gave the signal a meaning (ignored, or a handler): not this hook's to take
    out_dir = HERE.parent / "stacks"
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(Exception):
        _drop_files_of_gone_ranks(out_dir, socket.gethostname())
    path = out_dir / f"{socket.gethostname()}-{os.getpid()}.txt"
    out = path.open("a")  # open for the life of the process: faulthandler writes to it
    os.utime(path)  # made now: the reader signals only a file newer than the process
    faulthandler.register(signal.SIGUSR2, file=out, all_threads=True, chain=False)
    sys.__dict__["_clusterkit_stacks_file"] = out  # faulthandler keeps it too; this says why it stays open
    _yield_when_taken(path)


def _drop_files_of_gone_ranks(out_dir: Path, host: str) -> None:
    """Earlier ranks' files on this host whose process is gone (each job would otherwise leave its own)."""
    for old in out_dir.glob(host + "-*.txt"):
        try:
            os.kill(int(old.stem.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            old.unlink()
        except (ValueError, OSError):
            continue


def _yield_when_taken(path: Path) -> None:
    """When the job sets its own SIGUSR2 handler (submitit's requeue, a framework's checkpoint), the hook
    steps aside: its file goes, so ``clusterkit stacks`` never sends this rank a signal that now means
    something else."""
    import faulthandler
    import signal

    original = signal.signal

    def signal_(signalnum, handler):  # type: ignore[no-untyped-def]
        if signalnum == signal.SIGUSR2:
            with contextlib.suppress(Exception):
                faulthandler.unregister(signal.SIGUSR2)
            with contextlib.suppress(Exception):  # the file goes even where unregistering failed
                path.unlink()
        return original(signalnum, handler)

    signal.signal = signal_


def _run_shadowed() -> None:
    """The next ``sitecustomize`` on the path, which this one hides, run as Python would have run it."""
    import importlib.machinery
    import importlib.util

    rest = [p for p in sys.path if Path(p or ".").resolve() not in RAN]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if HERE not in RAN:
    RAN.add(HERE)
    with contextlib.suppress(Exception):  # a rank must start whatever happens here
        _install()
    try:
        _run_shadowed()
    except Exception as exc:  # reported as the flight recorder's hook does, never the job's end
        print(f"clusterkit stack hook: the other sitecustomize failed: {exc}", file=sys.stderr)
