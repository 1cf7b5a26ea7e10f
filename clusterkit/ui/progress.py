"""A live per-node status view for long multi-node operations (doctor fan-out, bootstrap steps).

On a terminal it is a table redrawn in place; otherwise (CI logs, pipes) it prints one line each
time a node reaches a final state, so logs stay readable.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from clusterkit.cluster import Nodes
# A host that said something is shown with how long ago ("last heard 3s ago"), not as a state it is in
from clusterkit.workloads.session import LAST_HEARD

_STYLES = {"ok": "green", "done": "green", "failed": "bold red", "timed out": "bold red",
           "skipped": "dim", "changed": "cyan", "would change": "yellow"}
FINAL_STATES = frozenset(_STYLES)


class NodeProgress:
    """Thread-safe: worker threads call :meth:`update`; the view refreshes itself."""

    def __init__(self, hosts: list[str], title: str, console: Console | None = None) -> None:
        self.title = title
        self.console = console or Console(stderr=True)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._state: dict[str, tuple[str, str, float]] = {h: ("waiting", "", self._started) for h in hosts}
        self._live: Live | None = None

    def __enter__(self) -> NodeProgress:
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False,
                              get_renderable=self._render)
            self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def update(self, host: str, state: str, detail: str = "") -> None:
        """Record ``host``'s state (``connecting``, ``collecting``, ``ok``, ``failed``...)."""
        with self._lock:
            previous = self._state.get(host, ("", "", 0.0))[0]
            self._state[host] = (state, detail, time.monotonic())
        if self._live is None and state in FINAL_STATES and previous != state:
            elapsed = time.monotonic() - self._started
            line = Text(f"{self.title}: {host}: ")
            line.append(state, style=_STYLES.get(state, ""))
            if detail:
                line.append(f" ({detail})")
            line.append(f" [{elapsed:.1f}s]", style="dim")
            self.console.print(line, highlight=False, soft_wrap=True)

    def _render(self) -> Table:
        table = Table(title=self.title, title_justify="left", expand=False)
        table.add_column("node", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("detail")
        now = time.monotonic()
        with self._lock:
            rows = list(self._state.items())
        for host, (state, detail, since) in rows:
            shown = state if state in FINAL_STATES else f"{state} {now - since:.0f}s"
            if state == LAST_HEARD:
                shown += " ago"
            table.add_row(host, Text(shown, style=_STYLES.get(state, "")), detail)
        return table


#: How each transport's nodes are reached, for view titles (messages only: nothing branches on it).
_REACHED = {"ssh": "over SSH", "slurm": "over Slurm", "local": "on this machine"}


def nodes_view(nodes: Nodes, doing: str, console: Console | None = None) -> NodeProgress:
    """A view of ``doing`` (``surveying``...) on every host of ``nodes``, titled with how they are reached."""
    return NodeProgress(nodes.names, f"{doing} {_REACHED.get(nodes.transport, nodes.describe())}", console)
