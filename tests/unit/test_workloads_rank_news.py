"""What a run says of each rank: only what the head heard, and when; never a state it has not seen.

issue 19, M2: a rank whose output was stuck behind a saturated link was shown as `starting` while its
peer was inside the same all_reduce.
"""

from __future__ import annotations

import re

from rich.console import Console

from clusterkit.ui.progress import NodeProgress
from clusterkit.workloads.diagnose import diagnose
from clusterkit.workloads.run import LogLine, RunOutcome
from clusterkit.workloads.session import _ProgressTracker

LAYOUT = {0: "node1", 1: "node2", 2: "node3", 3: "node4"}


def rank_line(seconds: float, rank: int, text: str) -> LogLine:
    return LogLine(seconds, "out", LAYOUT[rank], rank, text)


#: node3's rank said "starting" and then nothing got through its saturated link; node1 and node2 went
#: on into the all_reduce; node4's rank printed a warning but no progress; the run hit its deadline.
LINES = [
    rank_line(2.0, 0, "@@ck-progress@@ starting"),
    rank_line(2.5, 1, "@@ck-progress@@ starting"),
    rank_line(3.0, 2, "@@ck-progress@@ starting"),
    rank_line(4.0, 3, "[W socket.cpp:697] some warning"),
    rank_line(60.0, 0, "@@ck-progress@@ all_reduce 64 MiB"),
    rank_line(61.0, 1, "@@ck-progress@@ all_reduce 64 MiB"),
    rank_line(119.0, 1, "still here"),
]
TIMED_OUT = RunOutcome(["deepspeed"], "abc123", -9, 120.0, LINES, timed_out=True)


def test_each_rank_is_described_by_what_was_last_heard_of_it_and_when() -> None:
    news = TIMED_OUT.rank_news()
    assert news[2] == "last heard 117s before the end, its last progress 'starting' at 3s"
    assert news[1] == "last heard 1s before the end, its last progress 'all_reduce 64 MiB' at 61s"
    assert news[3] == "last heard 116s before the end, no progress reported"


def test_the_deadline_finding_lists_the_longest_silent_rank_first_with_when_it_was_heard() -> None:
    """issue 19, M2"""
    layout = {**LAYOUT, 4: "node4"}  # rank 4 never heard from at all
    found = [f for f in diagnose(TIMED_OUT, layout, "collectives").findings if f.check_id == "workload-deadline"]
    assert len(found) == 1
    message = found[0].message
    assert message.startswith("collectives did not finish within 120s; ranks not done: rank 4 on node4: nothing "
                              "heard from it in 120s; rank 2 on node3: last heard 117s before the end, its last "
                              "progress 'starting' at 3s; rank 3 on node4: last heard 116s before the end, no "
                              "progress reported; rank 0 on node1:"), message
    assert "rank 2 on node3: starting" not in message


def rendered(progress: NodeProgress) -> dict[str, tuple[str, str]]:
    console = Console(width=200, record=True)
    console.print(progress._render())
    rows = {}
    for line in console.export_text().splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) >= 4 and cells[1] in LAYOUT.values():
            rows[cells[1]] = (cells[2], cells[3])
    return rows


def test_the_live_view_says_when_each_node_was_last_heard_and_when_its_ranks_said_what() -> None:
    """issue 19, M2"""
    quiet = Console(file=open("/dev/null", "w"), force_terminal=False)  # noqa: SIM115
    progress = NodeProgress(list(dict.fromkeys(LAYOUT.values())), "collectives", quiet)
    tracker = _ProgressTracker(progress, LAYOUT)
    assert {state for state, _ in rendered(progress).values()} == {"no output for 0s"}
    for line in LINES[:6]:
        tracker.on_line(line)
    rows = rendered(progress)
    assert re.fullmatch(r"last heard \d+s ago", rows["node3"][0])
    assert rows["node3"][1] == "rank 2: starting (at 3s)"
    assert rows["node1"][1] == "rank 0: all_reduce 64 MiB (at 60s)"
    assert rows["node4"][1] == ""  # heard, but it said nothing of where it is
    tracker.finish(TIMED_OUT)
    rows = rendered(progress)
    assert rows["node3"] == ("timed out", "ranks [2] not done; rank 2: last heard 117s before the end, its last "
                                          "progress 'starting' at 3s")
