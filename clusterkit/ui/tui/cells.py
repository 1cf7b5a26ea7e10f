"""Table cells for the monitor: numbers formatted and coloured by the thresholds (Rich text, no Textual)."""

from __future__ import annotations

from rich.text import Text

from clusterkit.monitor.model import GpuSample
from clusterkit.monitor.views import NodeSummary, RankRow
from clusterkit.ui.tui.thresholds import HARDWARE_REASONS, Thresholds

NA = Text("-", style="dim")
STATUS_STYLES = {"up": "green", "stale": "bold yellow", "down": "bold white on red", "waiting": "dim",
                 "running": "green", "stalled": "bold yellow", "exited": "bold white on red",
                 "node-down": "bold red"}


def size(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit in ("B", "K") else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def rate(value: float | None) -> str:
    return "-" if value is None else size(value) + "/s"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


BLOCKS = " ▁▂▃▄▅▆▇█"


def spark(values: list[float | None], full_scale: float = 100.0) -> str:
    """A text sparkline on a fixed 0..full_scale range (a gap where no value was read)."""
    return "".join(" " if v is None else BLOCKS[max(0, min(8, round(8 * v / full_scale)))] for v in values)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def status(text: str) -> Text:
    return Text(text.upper() if text in ("down", "exited") else text, style=STATUS_STYLES.get(text, ""))


def temp(value: float | None, t: Thresholds) -> Text:
    if value is None:
        return NA
    style = "bold red" if value >= t.temp_crit_c else "yellow" if value >= t.temp_warn_c else ""
    return Text(f"{value:.0f}°C", style=style)


def power(draw: float | None, limit: float | None, t: Thresholds) -> Text:
    if draw is None:
        return NA
    if not limit:
        return Text(f"{draw:.0f}W")
    return Text(f"{draw:.0f}/{limit:.0f}W", style="yellow" if draw >= t.power_warn_frac * limit else "")


def reasons(names: tuple[str, ...] | None) -> Text:
    if not names:
        return Text("")
    shown = [n for n in names if n != "gpu_idle"]
    style = "bold red" if any(n in HARDWARE_REASONS for n in shown) else "yellow" if shown else "dim"
    return Text(",".join(shown) or "idle", style=style)


def count(value: int) -> Text:
    return Text(str(value), style="bold red") if value else Text("0", style="dim")


def node_row(s: NodeSummary, t: Thresholds, straggling: bool) -> tuple[Text | str, ...]:
    gpus = f"{s.gpus_up}/{s.gpus_expected}" if s.gpus_expected and s.gpus_up else str(s.gpus_up or "-")
    util = "-" if s.util_avg is None else f"{s.util_min:.0f}/{s.util_avg:.0f}/{s.util_max:.0f}"
    host = Text(s.host + (" ⚑" if straggling else ""), style="bold yellow" if straggling else "")
    return (host, status(s.status), gpus, temp(s.worst_temp_c, t), power(s.power_w, s.power_limit_w, t),
            util, f"{size(s.gpu_mem_used)}/{size(s.gpu_mem_total)}" if s.gpu_mem_total else "-",
            reasons(s.throttle), count(s.new_ecc), count(s.new_xid), pct(s.cpu_pct),
            f"{size(s.ram_used)}/{size(s.ram_total)}" if s.ram_total else "-",
            f"{rate(s.net_rx_bps)} {rate(s.net_tx_bps)}" if s.net_rx_bps is not None else "-",
            str(s.ranks), Text(age(s.age_s), style="bold red" if s.status in ("down", "stale") else ""))


NODE_COLUMNS = ("node", "status", "GPUs", "temp", "power", "util min/avg/max", "GPU mem", "throttle",
                "ECC", "XID", "CPU", "RAM", "net rx tx", "ranks", "age")


def gpu_row(g: GpuSample, t: Thresholds, straggling: bool) -> tuple[Text | str, ...]:
    mem = f"{size(g.mem_used)}/{size(g.mem_total)}" if g.mem_total else "-"
    clock = "-" if g.sm_mhz is None else f"{g.sm_mhz:.0f}/{g.sm_max_mhz or 0:.0f}"
    index = Text(f"{g.index}" + (" ⚑" if straggling else ""), style="bold yellow" if straggling else "")
    pcie = "-" if g.pcie_tx_kbs is None else f"{rate((g.pcie_tx_kbs or 0) * 1024)} {rate((g.pcie_rx_kbs or 0) * 1024)}"
    return (index, g.name or "-", pct(g.util_pct), mem, temp(g.temp_c, t), power(g.power_w, g.power_limit_w, t),
            clock, reasons(g.reasons), "-" if g.ecc_uncorrected is None else str(g.ecc_uncorrected), pcie)


GPU_COLUMNS = ("GPU", "name", "util", "memory", "temp", "power", "SM MHz", "throttle", "ECC unc", "PCIe tx rx")


def rank_row(r: RankRow, straggling: bool) -> tuple[Text | str, ...]:
    rank = Text(f"{r.rank}" + (" ⚑" if straggling else ""), style="bold yellow" if straggling else "")
    world = f"/{r.world_size}" if r.world_size else ""
    return (rank, f"{r.local_rank}{world}", r.host, str(r.pid), "-" if r.gpu is None else str(r.gpu),
            size(r.gpu_mem), pct(r.cpu_pct), size(r.rss), r.proc_state, status(r.status), r.cmd)


RANK_COLUMNS = ("rank", "local/world", "node", "pid", "GPU", "GPU mem", "CPU", "RSS", "S", "state", "command")
