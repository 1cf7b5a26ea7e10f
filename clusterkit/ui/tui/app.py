"""``clusterkit monitor``: the Textual app. It reads a ``Source`` (live or replayed) and never speaks SSH.

A timer (``refresh_s``) ticks the source and redraws the screen on top only when the state changed
(or ages moved on); sources work in their own threads, so a dead node never freezes the view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static

from clusterkit.monitor.progress import Progress
from clusterkit.monitor.sources import Source
from clusterkit.monitor.stall import Stall
from clusterkit.monitor.views import (
    NodeSummary,
    RankRow,
    Straggler,
    find_stragglers,
    rank_rows,
    summarize_cluster,
)
from clusterkit.ui.tui import cells
from clusterkit.ui.tui.grid import Grid
from clusterkit.ui.tui.thresholds import Alert, Thresholds, all_alerts, job_stall

#: Samples of history drawn per line in the node view.
HISTORY_COLUMNS = 100

SORTS: dict[str, Callable[[NodeSummary], Any]] = {
    "hostfile": lambda s: 0,
    "status": lambda s: ("down", "stale", "waiting", "up").index(s.status),
    "util": lambda s: -1 if s.util_avg is None else s.util_avg,
    "temp": lambda s: -(s.worst_temp_c or 0),
    "power": lambda s: -(s.power_w or 0),
    "age": lambda s: -(s.age_s or 0),
}


@dataclass(frozen=True)
class Snapshot:
    """Everything the screens show, computed once per redraw."""

    summaries: list[NodeSummary]
    ranks: list[RankRow]
    stragglers: list[Straggler]
    alerts: list[Alert]
    now: float
    live: bool
    progress: Progress | None = None
    #: What the viewer must know about the data (a recording cut short).
    notice: str | None = None
    #: The job's stall by its log, if it stalled.
    stall: Stall | None = None

    def straggling_hosts(self) -> set[str]:
        return {s.host for s in self.stragglers}


def progress_text(snap: Snapshot) -> Text:
    """The job's own progress from its log (``--log``), and what the viewer must know, or nothing."""
    text = Text("")
    p = snap.progress
    if p is not None:
        age = f", last step {cells.age(max(0.0, snap.now - p.updated_at))} ago" if p.updated_at is not None else ""
        text.append(f"\njob: {p.describe()}{age}", style="bold red" if p.error else "bold cyan")
    if snap.stall is not None:
        text.append(f"\n{snap.stall.describe()}", style="bold white on red")
    if snap.notice:
        text.append(f"\n{snap.notice}", style="bold yellow")
    return text


def alert_lines(alerts: list[Alert], limit: int) -> Text:
    if not alerts:
        return Text("no alerts", style="green")
    ordered = sorted(alerts, key=lambda a: (a.level != "crit", a.host))
    text = Text()
    for alert in ordered[:limit]:
        text.append("CRIT " if alert.level == "crit" else "WARN ",
                    style="bold white on red" if alert.level == "crit" else "bold black on yellow")
        text.append(f" {alert.host}: {alert.text}\n")
    if len(ordered) > limit:
        text.append(f"... and {len(ordered) - limit} more (f: faults only)", style="dim")
    return text


class MonitorScreen(Screen[None]):
    """A screen the app redraws from each snapshot."""

    def show(self, snap: Snapshot, app: MonitorApp) -> None:
        raise NotImplementedError

    def on_screen_resume(self) -> None:
        self.app.call_after_refresh(self.app.refresh_view, True)  # type: ignore[attr-defined]


class OverviewScreen(MonitorScreen):
    """A row per node; enter drills into one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "cycle_sort", "sort"),
        Binding("r", "reverse", "reverse"),
        Binding("f", "faults", "faults only"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear_filter", "clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="overview")
        self.sort = "hostfile"
        self.reverse = False
        self.faults_only = False
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        yield Grid(cells.NODE_COLUMNS, id="nodes")
        yield Input(placeholder="filter nodes (substring), enter to apply, escape to clear", id="filter")
        yield Static(id="alerts")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False

    def show(self, snap: Snapshot, app: MonitorApp) -> None:
        summaries = [s for s in snap.summaries if self.filter_text in s.host]
        faulty = {a.host for a in snap.alerts}
        if self.faults_only:
            summaries = [s for s in summaries if s.status != "up" or s.host in faulty]
        summaries.sort(key=SORTS[self.sort], reverse=self.reverse)
        straggling = snap.straggling_hosts()
        self.query_one("#nodes", Grid).set_rows(
            [s.host for s in summaries], [cells.node_row(s, app.thresholds, s.host in straggling) for s in summaries])
        up = sum(1 for s in snap.summaries if s.status == "up")
        header = Text()
        header.append(f"{app.title_text}  ", style="bold")
        all_up = up == len(snap.summaries)
        header.append(f"{up}/{len(snap.summaries)} nodes up", style="green" if all_up else "bold red")
        header.append(f"  {len(snap.ranks)} ranks  {len(snap.stragglers)} stragglers  ")
        header.append(f"sort: {self.sort}{' (reversed)' if self.reverse else ''}")
        if self.faults_only:
            header.append("  faults only", style="bold yellow")
        if self.filter_text:
            header.append(f"  filter: {self.filter_text!r}", style="bold cyan")
        header.append(f"  {app.clock_text(snap)}", style="dim")
        header.append_text(progress_text(snap))
        self.query_one("#summary", Static).update(header)
        self.query_one("#alerts", Static).update(alert_lines(snap.alerts, 6))

    def _redraw(self) -> None:
        self.app.refresh_view(force=True)  # type: ignore[attr-defined]

    def action_cycle_sort(self) -> None:
        names = list(SORTS)
        self.sort = names[(names.index(self.sort) + 1) % len(names)]
        self._redraw()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self._redraw()

    def action_faults(self) -> None:
        self.faults_only = not self.faults_only
        self._redraw()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value, box.display, self.filter_text = "", False, ""
        self.query_one("#nodes", Grid).focus()
        self._redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        event.input.display = False
        self.query_one("#nodes", Grid).focus()
        self._redraw()

    def on_grid_selected(self, event: Grid.Selected) -> None:
        self.app.push_screen(NodeScreen(event.key))


class NodeScreen(MonitorScreen):
    """One node: every GPU with its utilisation history, and the ranks on it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    def compose(self) -> ComposeResult:
        yield Static(id="node-title")
        yield Grid(cells.GPU_COLUMNS, id="gpus")
        yield Static(id="history")
        yield Grid(cells.RANK_COLUMNS, id="node-ranks")
        yield Static(id="node-alerts")
        yield Footer()

    def show(self, snap: Snapshot, app: MonitorApp) -> None:
        summary = next((s for s in snap.summaries if s.host == self.host), None)
        view = app.source.state.nodes.get(self.host)
        if summary is None or view is None:
            return
        title = Text()
        title.append(f"{self.host}  ", style="bold")
        title.append_text(cells.status(summary.status))
        title.append(f"  last sample {cells.age(summary.age_s)} ago  CPU {cells.pct(summary.cpu_pct)} of "
                     f"{summary.ncpu}  RAM {cells.size(summary.ram_used)}/{cells.size(summary.ram_total)}  "
                     f"net {cells.rate(summary.net_rx_bps)} in {cells.rate(summary.net_tx_bps)} out  "
                     f"restarts {summary.restarts}  missed samples {summary.missed}")
        if summary.gpu_na:
            title.append(f"\nGPUs: {summary.gpu_na}", style="yellow")
        if summary.why and summary.status != "up":
            title.append(f"\n{summary.why}", style="bold red")
        self.query_one("#node-title", Static).update(title)
        sample = view.last
        gpus = sample.gpus if sample else ()
        straggling = {s.gpu for s in snap.stragglers if s.host == self.host and s.gpu is not None}
        self.query_one("#gpus", Grid).set_rows(
            [str(g.index) for g in gpus], [cells.gpu_row(g, app.thresholds, g.index in straggling) for g in gpus])
        self._show_history(view.history, [g.index for g in gpus])
        ranks = [r for r in snap.ranks if r.host == self.host]
        rank_straggling = {s.rank for s in snap.stragglers if s.host == self.host and s.rank is not None}
        self.query_one("#node-ranks", Grid).set_rows(
            [f"{r.job}/{r.rank}" for r in ranks], [cells.rank_row(r, r.rank in rank_straggling) for r in ranks])
        self.query_one("#node-alerts", Static).update(
            alert_lines([a for a in snap.alerts if a.host == self.host], 8))

    def _show_history(self, history: Any, indexes: list[int]) -> None:
        """A line per GPU (or the CPU when there is none): utilisation over time on a 0-100% scale."""
        series: dict[int, list[float | None]] = {}
        for sample in history:
            if indexes:
                for gpu in sample.gpus:
                    series.setdefault(gpu.index, []).append(gpu.util_pct)
            else:
                series.setdefault(-1, []).append(sample.cpu_pct)
        text = Text()
        for key, values in sorted(series.items()):
            label = f"GPU{key} util " if key >= 0 else "CPU %     "
            text.append(label, style="dim")
            text.append(cells.spark(values[-HISTORY_COLUMNS:]), style="cyan")
            text.append(f" {cells.pct(values[-1])}\n")
        self.query_one("#history", Static).update(text)


class JobScreen(MonitorScreen):
    """Every training rank across the nodes: where it runs, what it uses, whether it is alive."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]

    def compose(self) -> ComposeResult:
        yield Static(id="job-title")
        yield Grid(cells.RANK_COLUMNS, id="ranks")
        yield Static(id="stragglers")
        yield Footer()

    def show(self, snap: Snapshot, app: MonitorApp) -> None:
        jobs = sorted({r.job for r in snap.ranks})
        title = Text(f"job view  {len(snap.ranks)} ranks in {len(jobs)} job(s): {', '.join(jobs) or 'none'}  ",
                     style="bold")
        title.append(app.clock_text(snap), style="dim")
        title.append_text(progress_text(snap))
        self.query_one("#job-title", Static).update(title)
        straggling = {(s.host, s.rank) for s in snap.stragglers if s.rank is not None}
        straggling_gpus = {(s.host, s.gpu) for s in snap.stragglers if s.gpu is not None}
        self.query_one("#ranks", Grid).set_rows(
            [f"{r.job}/{r.rank}" for r in snap.ranks],
            [cells.rank_row(r, (r.host, r.rank) in straggling or (r.host, r.gpu) in straggling_gpus)
             for r in snap.ranks])
        text = Text("stragglers: ", style="bold")
        text.append(", ".join(s.describe() for s in snap.stragglers) or "none",
                    style="bold yellow" if snap.stragglers else "green")
        self.query_one("#stragglers", Static).update(text)


HELP = """\
[b]clusterkit monitor[/b]: keys

  [b]enter[/b]   open the selected node (GPUs, history, ranks)
  [b]j[/b]       job view: every rank, where it runs, its state
  [b]s[/b] / [b]r[/b]   sort by hostfile, status, util, temp, power, age / reverse
  [b]f[/b]       faults only: nodes down, stale or with an alert
  [b]/[/b]       filter nodes by name (escape clears)
  [b]t[/b]       take every rank's stack, grouped (as `clusterkit stacks`)
  [b]n[/b]       step a paused replay one interval on
  [b]escape[/b]  back      [b]?[/b] this help      [b]q[/b] quit

A node is [b]stale[/b] after {stale:g}s without a sample and [b]DOWN[/b] when its link is lost
(reconnecting with backoff); the age column says how old its last sample is.
A [b]⚑ straggler[/b] sits under {ratio:.0%} of its peers' median utilisation, SM clock or power
(ranks: CPU) over the last {window} samples. Thresholds: --alert NAME=VALUE.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "app.pop_screen", "close")]

    def __init__(self, thresholds: Thresholds) -> None:
        super().__init__()
        self.thresholds = thresholds

    def compose(self) -> ComposeResult:
        t = self.thresholds
        yield Static(HELP.format(stale=t.stale_after_s, ratio=t.straggler_ratio, window=t.straggler_window),
                     id="help")


#: Takes every rank's stack and returns them grouped, ready to show.
StacksProvider = Callable[[], Text]


class StacksScreen(ModalScreen[None]):
    """The grouped stacks the ``t`` key took (escape closes)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,t,q", "app.pop_screen", "close")]

    def __init__(self, text: Text) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static(self.text, id="stacks")


class MonitorApp(App[None]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "clusterkit monitor"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("j", "jobs", "job view"),
        Binding("n", "step", "step", show=False),
        Binding("question_mark", "help", "help"),
        # Kept out of the footer, whose snapshot tests pin its width; README and the help screen name it.
        Binding("t", "stacks", "stacks", show=False),
    ]

    def __init__(self, source: Source, thresholds: Thresholds, *, refresh_s: float = 0.5,
                 title: str = "clusterkit monitor", stacks: StacksProvider | None = None) -> None:
        super().__init__()
        self.source = source
        #: Takes the job's stacks and returns them grouped, as text (``t``); runs in a worker thread.
        self.stacks = stacks
        self._stragglers: tuple[float | None, list[Straggler]] = (None, [])
        self.thresholds = thresholds
        self.refresh_s = refresh_s
        self.title_text = title
        self._drawn_version = -1
        self._drawn_second = -1
        self.overview = OverviewScreen()

    def on_mount(self) -> None:
        self.push_screen(self.overview)
        self.source.start()
        self.set_interval(self.refresh_s, self._tick)

    def on_unmount(self) -> None:
        self.source.stop()

    def _tick(self) -> None:
        self.source.tick()
        self.refresh_view()

    def snapshot(self) -> Snapshot:
        state, t = self.source.state, self.thresholds
        summaries = summarize_cluster(state, t.stale_after_s)
        ranks = rank_rows(state, t.stale_after_s, t.stall_after_s)
        # Stragglers are judged over a window of samples: once per interval is enough (and the costliest part).
        cached_at, stragglers = self._stragglers
        if cached_at is None or not 0 <= state.now - cached_at < state.interval_s:
            stragglers = find_stragglers(state, t.stale_after_s, t.straggler_ratio, t.straggler_window)
            self._stragglers = (state.now, stragglers)
        return Snapshot(summaries, ranks, stragglers, all_alerts(summaries, ranks, stragglers, state, t),
                        state.now, self.source.live, state.progress, self.source.notice, job_stall(state, ranks, t))

    def refresh_view(self, force: bool = False) -> None:
        """Redraw the screen on top if the state changed, or every second for the ages when live."""
        version = self.source.state.version
        second = int(time.time()) if self.source.live else 0
        if not force and version == self._drawn_version and second == self._drawn_second:
            return
        self._drawn_version, self._drawn_second = version, second
        screen = self.screen
        if isinstance(screen, MonitorScreen):
            try:
                screen.show(self.snapshot(), self)
            except NoMatches:  # pushed but not composed yet: its resume draws it
                self._drawn_version = -1

    def clock_text(self, snap: Snapshot) -> str:
        if snap.live:
            return time.strftime("%H:%M:%S", time.localtime(snap.now))
        return "replay " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(snap.now)) + " UTC"

    def action_jobs(self) -> None:
        if not isinstance(self.screen, JobScreen):
            self.push_screen(JobScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.thresholds))

    def action_stacks(self) -> None:
        """``t``: take the ranks' stacks and show them grouped (the hook for ``clusterkit stacks``)."""
        provider = self.stacks
        if provider is None:
            self.notify("a replay has no live ranks to read: run `clusterkit stacks` against the job",
                        severity="warning", timeout=6)
            return
        self.notify("taking every rank's stack...", timeout=3)

        def take() -> None:
            text = provider()
            self.call_from_thread(self.push_screen, StacksScreen(text))

        self.run_worker(take, thread=True, exclusive=True, group="stacks")

    def action_step(self) -> None:
        if self.source.step():
            self.refresh_view(force=True)
