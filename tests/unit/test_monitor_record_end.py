"""A recording ends as the nodes were, not as the monitor that wrote it stopped: a node DOWN when the
monitor quit replays as DOWN (the streams' own "stopped" is not recorded)."""

from __future__ import annotations

import time
from pathlib import Path

from clusterkit.cluster.remote.stream import ByteChannel, ProcessOpener
from clusterkit.monitor.sources import LiveSource, Recorder, ReplaySource, line_streams
from clusterkit.node.collect.sampler import SAMPLE_MARKER


class Opener:
    """``up`` prints two samples a second and lives on; ``gone`` dies at once, every time."""

    def __init__(self) -> None:
        self.local = ProcessOpener()

    def __call__(self, host: str, command: str) -> ByteChannel:
        if host == "gone":
            return self.local(host, "echo 'no agent here' >&2; exit 3")
        sample = SAMPLE_MARKER + '{"v": 1, "seq": 1, "t": 0}'
        return self.local(host, f"while :; do echo '{sample}'; sleep 0.5; done")


def test_a_node_down_when_the_monitor_quits_replays_as_down(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    hosts = ["up", "gone"]
    streams = line_streams(hosts, Opener(), "unused", stale_after_s=1.5, lost_after_s=5)
    source = LiveSource(hosts, {}, streams, 0.5, recorder=Recorder(path, hosts, {}, 0.5))
    source.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with source.state.lock:
            gone = source.state.nodes["gone"].link
            if gone is not None and gone.status == "lost" and source.state.nodes["up"].last is not None:
                break
        time.sleep(0.05)
    source.stop()
    assert '"stopped"' not in path.read_text()
    replay = ReplaySource(path, speed=0)
    replay.seek(replay.end_time)
    link = replay.state.nodes["gone"].link
    assert link is not None and link.status in ("lost", "connecting")
    assert link.error == "the command exited 3: no agent here"
