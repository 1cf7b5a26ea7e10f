"""The history of saved runs: written atomically under the user's clusterkit directory, capped with the
oldest unnamed runs dropped first, named runs kept; ``--compare`` takes the run named good, else the last
of its kind; ``clusterkit history`` lists, names and shows them; doctor saves and compares end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterkit.cli import main
from clusterkit.core.saved_run import Figure, SavedRun
from clusterkit.errors import UsageError
from clusterkit.history import History, clusterkit_home


def a_run(kind: str = "doctor", started_at: float = 1795420000.0, workload: str = "", figure: float = 1.0) -> SavedRun:
    return SavedRun(kind, hosts=["node1"], figures=[Figure("node1", "m", figure, "GB/s")], workload=workload,
                    started_at=started_at)


def test_the_history_lives_in_the_users_clusterkit_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLUSTERKIT_HOME")
    assert clusterkit_home() == Path("~/.clusterkit").expanduser()


def test_a_saved_run_is_one_json_file_and_no_temporary_is_left(tmp_path: Path) -> None:
    history = History(tmp_path / "runs")
    entry = history.save(a_run(), name="good")
    assert sorted(p.name for p in history.root.iterdir()) == sorted([entry.path.name, "names.json", ".lock"])
    assert history.root.stat().st_mode & 0o777 == 0o700  # the nodes' facts are this user's to read
    assert json.loads(entry.path.read_text())["schema"] == "clusterkit.run/v1"
    assert entry.names == ("good",) and entry.label == "doctor"


def test_two_runs_naming_at_once_both_keep_their_names(tmp_path: Path) -> None:
    import threading

    history = History(tmp_path)
    runs = [history.save(a_run(started_at=1.0 + i)) for i in range(8)]
    threads = [threading.Thread(target=History(tmp_path).mark, args=(f"name{i}", run.id))
               for i, run in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(n for e in history.entries() for n in e.names) == sorted(f"name{i}" for i in range(8))


def test_past_the_cap_the_oldest_unnamed_runs_go_first_and_named_ones_stay(tmp_path: Path) -> None:
    history = History(tmp_path, cap_bytes=10**9)
    first = history.save(a_run(started_at=1.0), name="good")
    older = [history.save(a_run(started_at=2.0 + i)) for i in range(3)]
    history.cap_bytes = 2 * first.size + 10  # room for two runs
    newest = history.save(a_run(started_at=10.0))
    kept = [e.id for e in history.entries()]
    assert kept == [first.id, newest.id]
    assert not any(e.path.exists() for e in older)


def test_compare_takes_the_run_named_good_else_the_last_of_its_kind(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.save(a_run(started_at=1.0, figure=1.0))
    history.save(a_run("bench", started_at=2.0, workload="gpu", figure=5.0))
    history.save(a_run(started_at=3.0, figure=3.0))
    run, named = history.reference(None, "doctor")
    assert run.figures[0].value == 3.0 and "(good)" not in named
    history.mark("good", history.entries()[0].id)
    run, named = history.reference(None, "doctor")
    assert run.figures[0].value == 1.0 and named.endswith("(good)")
    run, _ = history.reference(None, "bench gpu")
    assert run.figures[0].value == 5.0
    with pytest.raises(UsageError, match="no saved bench collectives run"):
        history.reference(None, "bench collectives")


def test_a_name_is_held_by_one_run_per_kind(tmp_path: Path) -> None:
    history = History(tmp_path)
    doctor = history.save(a_run(started_at=1.0), name="good")
    bench = history.save(a_run("bench", started_at=2.0, workload="gpu"), name="good")
    later = history.save(a_run(started_at=3.0), name="good")
    names = {e.id: e.names for e in history.entries()}
    assert names == {doctor.id: (), bench.id: ("good",), later.id: ("good",)}
    assert history.find("good", "doctor").id == later.id


def test_compare_with_a_file_that_is_not_a_saved_run_is_a_one_line_usage_error(tmp_path: Path) -> None:
    other = tmp_path / "doctor.json"
    other.write_text(json.dumps({"schema": "clusterkit.doctor/v1"}))
    with pytest.raises(UsageError, match="not a saved run"):
        History(tmp_path / "runs").reference(str(other), "doctor")


def test_doctor_saves_its_run_and_compares_the_next_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json", "--name", "good", "--timeout", "20"]) in (0, 1)
    capsys.readouterr()
    assert main(["doctor", "--json", "--compare", "--no-save-run", "--timeout", "20"]) in (0, 1)
    out = capsys.readouterr()
    doc = json.loads(out.out)
    compared = [f for f in doc["findings"] if f["check"] in ("nothing-changed", "changed-software",
                                                              "changed-hardware", "counter-grew")]
    assert [f["check"] for f in compared] == ["nothing-changed"], compared
    assert "nothing changed" in out.err
    assert [e.names for e in History().entries()] == [("good",)]


def test_history_list_mark_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    History().save(a_run(started_at=1.0))
    assert main(["history", "mark", "good"]) == 0
    assert "is now 'good'" in capsys.readouterr().out
    assert main(["history", "list"]) == 0
    assert "good" in capsys.readouterr().out
    assert main(["history", "show", "good", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "doctor"
    assert main(["history", "show", "nosuchrun"]) == 2


def test_a_run_both_named_and_not_saved_is_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--name", "good", "--no-save-run"]) == 2
    assert "--name saves the run" in capsys.readouterr().err
    assert main(["bench", "find-slow", "/nonexistent/hostfile", "--name", "good", "--no-save-run"]) == 2


# ---------------------------------------------------------------------- what users do to the files


@pytest.mark.parametrize("text", ["[]", "{not json", '{"good": ["x"]}'])
def test_a_names_file_that_is_not_one_is_a_one_line_error_and_is_never_rewritten(tmp_path: Path, text: str) -> None:
    history = History(tmp_path / "runs", cap_bytes=0)  # a cap every run is past: a trim would drop them all
    saved = history.save(a_run(started_at=1.0), name="good")
    (history.root / "names.json").write_text(text)
    with pytest.raises(UsageError, match=r"names\.json"):
        history.entries()
    with pytest.raises(UsageError, match=r"names\.json"):
        history.mark("better")
    with pytest.raises(UsageError, match=r"names\.json"):
        history.trim()
    assert (history.root / "names.json").read_text() == text and saved.path.exists()


def test_a_broken_names_file_stops_doctor_before_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    History().save(a_run(started_at=1.0), name="good")
    (History().root / "names.json").write_text("{\n  oops\n")
    assert main(["doctor", "--compare"]) == 2
    err = capsys.readouterr().err
    assert "names.json line 2: not JSON" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_name_held_by_runs_of_two_kinds_asks_for_the_id_and_says_which(tmp_path: Path) -> None:
    history = History(tmp_path)
    doctor = history.save(a_run(started_at=1.0), name="good")
    bench = history.save(a_run("bench", started_at=2.0, workload="gpu"), name="good")
    which = rf"'good' names a run of each kind \(bench gpu {bench.id}; doctor {doctor.id}\)"
    with pytest.raises(UsageError, match=which):
        history.find("good")
    assert history.find("good", "bench gpu").id == bench.id


def test_a_name_that_could_read_as_a_run_id_is_refused_before_a_run_is_written(tmp_path: Path) -> None:
    history = History(tmp_path)
    for name in ("2", "2026", "19700101"):  # on an empty history too: the run's own id would start so
        with pytest.raises(UsageError, match="could read as a run id"):
            history.save(a_run(started_at=1.0), name)
    assert history.entries() == []
    first = history.save(a_run(started_at=1.0))
    second = history.save(a_run(started_at=2.0), name="good2")
    for name in (first.id, second.id[:10]):
        with pytest.raises(UsageError, match="could read as a run id"):
            history.mark(name, second.id)
    assert history.find(first.id).id == first.id and history.find("good2").id == second.id


def test_a_name_whose_run_of_one_kind_is_gone_still_finds_the_other_and_says_what_went(tmp_path: Path) -> None:
    history = History(tmp_path)
    doctor = history.save(a_run(started_at=1.0), name="good")
    bench = history.save(a_run("bench", started_at=2.0, workload="gpu"), name="good")
    doctor.path.unlink()
    assert history.find("good").id == bench.id
    with pytest.raises(UsageError, match=f"'good' named doctor run {doctor.id}, which is no longer saved"):
        history.find("good", "doctor")


def test_an_unknown_run_says_no_saved_run_matches(tmp_path: Path) -> None:
    History(tmp_path).save(a_run())
    with pytest.raises(UsageError, match="no saved run matches 'nosuchrun'"):
        History(tmp_path).find("nosuchrun")


def test_compare_with_the_last_run_skips_a_newer_one_that_no_longer_reads_and_names_it(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.save(a_run(started_at=1.0, figure=1.0))
    broken = history.save(a_run(started_at=2.0, figure=2.0))
    broken.path.write_text("{truncated")
    run, named = history.reference(None, "doctor")
    assert run.figures[0].value == 1.0
    assert f"skipped 1 newer unreadable: {broken.path} is not JSON" in named
