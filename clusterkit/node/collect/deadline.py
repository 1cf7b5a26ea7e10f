"""Run things that may hang (NVML, nvidia-smi, a broken interpreter) behind a deadline.

A hung GPU driver blocks NVML calls forever; we would rather report "timed out" than wait. Work runs
in daemon threads so an abandoned call never keeps the process alive at exit.
Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

from clusterkit.node.facts import Maybe, Unavailable

T = TypeVar("T")


def call_with_deadline(func: Callable[[], T], timeout_s: float, what: str) -> Maybe[T]:
    """Return ``func()``, or ``Unavailable`` if it raised or did not finish within ``timeout_s``."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="deadline:" + what, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return Unavailable(f"{what} did not answer within {timeout_s:g}s (hung driver or device?)")
    if "error" in box:
        return Unavailable("{} failed: {}".format(what, describe_exception(box["error"])))
    return box["value"]  # type: ignore[return-value]


def describe_exception(exc: object) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


@dataclass
class CommandOutput:
    """A finished command: its exit status and decoded output."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 5) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


def run_command(argv: list[str], timeout_s: float, env: dict[str, str] | None = None,
                cwd: str | None = None, stdin_text: str | None = None) -> Maybe[CommandOutput]:
    """Run ``argv`` with a timeout; the whole process group is killed on timeout.

    Returns ``Unavailable`` when the program is missing, cannot start, or times out. A non-zero exit
    is returned as a ``CommandOutput`` so the caller decides what it means.
    """
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        return Unavailable(f"{argv[0]} not found")
    except OSError as exc:
        return Unavailable(f"cannot run {argv[0]}: {describe_exception(exc)}")
    try:
        data = stdin_text.encode() if stdin_text is not None else None
        out, err = proc.communicate(data, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return Unavailable("{} did not finish within {:g}s".format(" ".join(argv[:2]), timeout_s))
    return CommandOutput(list(argv), proc.returncode, out.decode("utf-8", "replace"),
                         err.decode("utf-8", "replace"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
        proc.communicate(timeout=2)
