"""Hostfiles and include/exclude filters behave like DeepSpeed's launcher, only stricter."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.cli import main
from clusterkit.core.inventory import load_hostfile, parse_hostfile, select_hosts
from clusterkit.errors import ClusterkitError, InputError, UsageError

REPO = Path(__file__).resolve().parents[2]


def test_hosts_keep_file_order_which_is_node_rank() -> None:
    hostfile = parse_hostfile("w1 slots=8\nw0 slots=4\n", "hf")
    assert hostfile.names == ["w1", "w0"]
    assert [h.slots for h in hostfile.hosts] == [8, 4]
    assert [h.line for h in hostfile.hosts] == [1, 2]


def test_comments_blank_lines_and_trailing_comments_are_skipped() -> None:
    text = "# cluster\n\n   \nw0 slots=2   # first\n\t# indented comment\nw1 slots=2\n"
    assert parse_hostfile(text).names == ["w0", "w1"]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("w0 slots=2\n// w1 slots=2\n", 2, "comments start with '#'"),
        ("w0 slots=4x\n", 1, "DeepSpeed would silently read slots=4"),
        ("w0 slots=-1\n", 1, "whole number"),
        ("w0 slots=\n", 1, "whole number"),
        ("w0\n", 1, "expected 'HOSTNAME slots=N'"),
        ("w0 gpus=8\n", 1, "expected 'HOSTNAME slots=N'"),
        ("w0 slots=2\nw1 slots=2\nw0 slots=2\n", 3, "duplicate host 'w0' (first on line 1)"),
        ("w0 slots=0\n", 1, "slots=0"),
        ("w0 slots=2 extra\n", 1, "unexpected text after slots"),
    ],
)
def test_bad_lines_name_file_line_and_the_problem(text: str, line: int, needle: str) -> None:
    with pytest.raises(InputError) as err:
        parse_hostfile(text, "cluster.txt")
    assert str(err.value).startswith(f"cluster.txt:{line}: ")
    assert needle in str(err.value)


def test_a_file_with_no_entries_is_an_error() -> None:
    with pytest.raises(InputError, match="no 'HOSTNAME slots=N' entries"):
        parse_hostfile("# nothing here\n\n", "empty.txt")


def test_missing_hostfile_is_an_input_error_not_a_silent_local_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_hostfile(tmp_path / "nope")


@pytest.mark.parametrize("path", sorted((REPO / "hostfiles").glob("*.txt")), ids=lambda p: p.name)
def test_example_hostfiles_parse(path: Path) -> None:
    assert load_hostfile(path).hosts


HF = parse_hostfile("w0 slots=4\nw1 slots=4\nw2 slots=2\n", "hf")


def slots_of(include: str = "", exclude: str = "") -> dict[str, tuple[int, ...]]:
    return {h.name: h.slots for h in select_hosts(HF, include, exclude)}


def test_no_filter_uses_every_slot() -> None:
    assert slots_of() == {"w0": (0, 1, 2, 3), "w1": (0, 1, 2, 3), "w2": (0, 1)}


def test_include_whole_hosts_and_slot_lists_keeps_hostfile_order() -> None:
    assert slots_of(include="w2@w0:1,3") == {"w0": (1, 3), "w2": (0, 1)}


def test_exclude_slots_and_whole_hosts() -> None:
    assert slots_of(exclude="w0:0@w1") == {"w0": (1, 2, 3), "w2": (0, 1)}


def test_repeated_host_in_a_filter_merges_slots() -> None:
    assert slots_of(include="w0:0@w0:2,0") == {"w0": (0, 2)}


@pytest.mark.parametrize(
    ("include", "exclude", "needle"),
    [
        ("w0", "w1", "mutually exclusive"),
        ("w9", "", "host 'w9' is not in hf"),
        ("w2:2", "", "w2 has slots 0..1 in hf, not slot 2"),
        ("w0:a", "", "slot 'a' on w0 is not a whole number"),
        ("w0:", "", "no slots after ':'"),
        ("w0@@w1", "", "empty node"),
        ("", "w0@w1@w2", "leaves no hosts"),
    ],
)
def test_bad_filters_are_usage_errors(include: str, exclude: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        select_hosts(HF, include, exclude)


@given(st.text(max_size=300))
def test_any_text_parses_or_fails_with_a_clusterkit_error(text: str) -> None:
    try:
        hostfile = parse_hostfile(text, "fuzz")
    except ClusterkitError as exc:
        assert str(exc).startswith("fuzz:")
        return
    assert all(h.slots > 0 for h in hostfile.hosts)


@given(st.text(alphabet="w012:,@ ab", max_size=40), st.booleans())
def test_any_filter_selects_or_fails_with_a_usage_error(spec: str, as_include: bool) -> None:
    try:
        active = select_hosts(HF, spec if as_include else "", "" if as_include else spec)
    except UsageError:
        return
    for host in active:
        assert set(host.slots) <= set(range(host.entry.slots))


def test_cli_reports_bad_hostfile_in_one_line_with_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=8\n// node2 slots=8\n")
    assert main(["doctor", str(hostfile)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"clusterkit: error: {hostfile}:2: unknown comment syntax '//'; " \
                          "hostfile comments start with '#'"
    assert "Traceback" not in err
