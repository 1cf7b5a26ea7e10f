"""What a push looks like: its stages, a live relay view (bytes and rate per hop), and the per-node outcomes.

Both views are :class:`~clusterkit.envpack.push.PushProgress` listeners the library reports to.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from clusterkit.cluster.remote.transfer import HopEvent
from clusterkit.envpack.push import FAILED, PushReport
from clusterkit.node.relay_hop import human as human_bytes

_STYLE = {"done": "green", "failed": "bold red", "lost": "bold red", "receiving": "cyan", "waiting": "dim"}
_OUTCOME_STYLE = {"up to date": "green", "installed": "cyan", "shared": "green", "would install": "yellow",
                  "failed": "bold red"}


class PhaseLines:
    """A push's stages as bold lines (verify moves no bytes: nothing else to show)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    def phase(self, text: str) -> None:
        self.console.print(f"[bold]{text}[/]", highlight=False)

    def hop(self, event: HopEvent) -> None:
        """Nothing to show per byte."""

    def round(self, number: int, chain: list[str], offset: int) -> None:
        """Nothing to show per round."""


class RelayView(PhaseLines):
    """A push's stages, and one row per node receiving the archive: its upstream, bytes so far and rate.

    On a terminal it redraws in place; elsewhere it prints a line when a node finishes or fails.
    """

    def __init__(self, total_bytes: int, console: Console | None = None) -> None:
        super().__init__(console)
        self.total = total_bytes
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, object]] = {}
        self._order: list[str] = []
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._live: Live | None = None
        self._started = time.monotonic()

    def __enter__(self) -> RelayView:
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              get_renderable=self._render)
            self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def round(self, number: int, chain: list[str], offset: int) -> None:
        """A relay round starts along ``chain`` (from byte ``offset``)."""
        with self._lock:
            for i, host in enumerate(chain):
                if host not in self._rows:
                    self._order.append(host)
                self._rows[host] = {"from": "head" if i == 0 else chain[i - 1], "state": "waiting", "pos": offset,
                                    "error": ""}
                self._samples[host] = deque(maxlen=12)
        if self._live is None:
            resumed = f" from {human_bytes(offset)}" if offset else ""
            self.console.print(f"relay round {number}{resumed}: head -> {' -> '.join(chain)}", highlight=False)

    def hop(self, event: HopEvent) -> None:
        with self._lock:
            row = self._rows.setdefault(event.host, {"from": "?", "state": "waiting", "pos": 0, "error": ""})
            if event.host not in self._order:
                self._order.append(event.host)
            if event.position is not None:
                row["pos"] = event.position
                self._samples.setdefault(event.host, deque(maxlen=12)).append((event.at, event.position))
            if event.kind in ("start", "progress"):
                row["state"] = "receiving" if row["state"] == "waiting" else row["state"]
            elif event.kind == "done":
                row["state"], row["pos"] = "done", self.total
            elif event.kind in ("failed", "lost"):
                row["state"], row["error"] = event.kind, event.error or ""
        if self._live is None and event.kind in ("done", "failed", "lost"):
            line = Text(f"  {event.host}: ")
            line.append(event.kind, style=_STYLE.get(event.kind, ""))
            line.append(f" ({self._rate(event.host)})" if event.kind == "done" else f": {event.error}")
            self.console.print(line, highlight=False, soft_wrap=True)

    def _rate(self, host: str) -> str:
        samples = self._samples.get(host) or deque()
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return "-"
        (t0, p0), (t1, p1) = samples[0], samples[-1]
        return f"{human_bytes((p1 - p0) / (t1 - t0))}/s"

    def _render(self) -> Table:
        table = Table(title=f"env broadcast ({human_bytes(self.total)}, {time.monotonic() - self._started:.0f}s)",
                      title_justify="left")
        for column in ("node", "from", "received", "rate", "state"):
            table.add_column(column, no_wrap=column != "state")
        with self._lock:
            for host in self._order:
                row = self._rows[host]
                pos = int(str(row["pos"]))
                state = str(row["state"])
                detail = f"{state}: {row['error']}" if row["error"] else state
                table.add_row(host, str(row["from"]), f"{human_bytes(pos)} ({100 * pos / max(1, self.total):.0f}%)",
                              self._rate(host), Text(detail, style=_STYLE.get(state, "")))
        return table


def outcome_text(report: PushReport, title: str) -> Text:
    """One block per node: its state, what was done, and for failures the error and the fix."""
    text = Text(f"{title}\n", style="bold")
    for host, result in report.nodes.items():
        text.append(f"  {host}: ", style="bold")
        text.append(result.status, style=_OUTCOME_STYLE.get(result.status, ""))
        if result.actions:
            text.append(f" ({'; '.join(result.actions)})")
        text.append("\n")
        if result.status == FAILED:
            text.append(f"    {result.error}\n", style="red")
            if result.fix:
                text.append(f"    fix: {result.fix}\n", style="green")
    for note in report.notes:
        text.append(f"  {note}\n", style="dim")
    return text
