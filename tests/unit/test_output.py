"""Output people copy from: nothing cut at 80 columns or in a pipe, flags named as clusterkit spells them."""

from __future__ import annotations

import pytest
from rich.console import Console

from clusterkit.checks import load_checks
from clusterkit.cli import main
from clusterkit.ui.progress import NodeProgress


def test_the_checks_list_keeps_every_id_tag_and_summary_whole_at_80_columns(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["checks"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    flat = " ".join(out.split())
    for spec in load_checks().values():
        assert f"{spec.id} {spec.severity.value} {','.join(spec.tags)}" in flat
        assert " ".join(spec.summary.split()) in flat


def test_progress_lines_in_a_pipe_keep_the_whole_detail() -> None:
    console = Console(record=True, width=80, force_terminal=False)
    detail = "wrote ~/.deepspeed_env: dropped line 2 (comment line: DeepSpeed does not skip comments)"
    with NodeProgress(["node1"], "deepspeed-env", console) as progress:
        progress.update("node1", "changed", detail)
    assert " ".join(detail.split()) in " ".join(console.export_text().split())


def test_fixes_name_clusterkits_own_flags() -> None:
    fixes = {spec.id: spec.fix for spec in load_checks().values()}
    assert "clusterkit launch --master-addr A" in fixes["master-unreachable"]
    assert "--master_port" not in fixes["master-unreachable"].replace("deepspeed --master_port", "")
