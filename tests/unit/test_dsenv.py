""".deepspeed_env: DeepSpeed's exact reading of the file, every problem with its line, merge and render."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterkit.core.dsenv import (
    DsEnvEntry,
    effective_values,
    merge_deepspeed_env,
    merge_path,
    parse_deepspeed_env,
    pdsh_export_prefix,
    render_deepspeed_env,
    repair_deepspeed_env,
    update_deepspeed_env,
)

PATH = "/root/.deepspeed_env"


def problems_of(*lines: str, quotes_values: bool = True) -> list[tuple[int, str, bool]]:
    _, problems = parse_deepspeed_env(list(lines), PATH, quotes_values=quotes_values)
    return [(p.line, p.code, p.breaks_launch) for p in problems]


# ----------------------------------------------------------------------------------------- problems


@pytest.mark.parametrize(("lines", "expected"), [
    (["A=1", "", "B=2"], [(2, "blank-line", True)]),
    (["A=1", "   "], [(2, "blank-line", True)]),
    (["# cluster settings", "A=1"], [(1, "comment-line", True)]),
    (["A=1", "NCCL_DEBUG"], [(2, "missing-equals", True)]),
    (["# NCCL_DEBUG=INFO"], [(1, "commented-entry", True)]),
    (["=value"], [(1, "empty-key", True)]),
    (["1ST=x", "MY-VAR=x", "A B=x"], [(1, "invalid-key", True), (2, "invalid-key", True), (3, "invalid-key", True)]),
    (['NAME="a b"'], [(1, "quoted-value", True)]),
    (['NAME="ab"'], [(1, "quoted-value", False)]),
    (["NAME='ab'"], [(1, "quoted-value", True)]),
    (['NAME=a"b'], [(1, "double-quote-in-value", True)]),
    (["DIR=C:\\dir\\"], [(1, "trailing-backslash", True)]),
    (["A = 1"], [(1, "whitespace", False)]),
    (["A=1   "], [(1, "whitespace", False)]),
    (["A=1\r"], [(1, "carriage-return", False)]),
    (["A=1", "B=2", "A=3"], [(3, "duplicate-key", False)]),
    (["STAMP=$(date +%s)"], [(1, "command-substitution", False)]),
    (["STAMP=`date`"], [(1, "command-substitution", False)]),
    (["NCCL_DEBUG_FILE=/tmp/nccl.%h.%p"], [(1, "pdsh-substitution", False)]),
    (["PATH=/opt/venv/bin"], [(1, "path-replaced", False)]),
    # issue 19, W6: a relative entry is looked up from whatever directory a rank runs in.
    (["PATH=envs/small/bin:/usr/bin"], [(1, "path-relative", False)]),
    (["PATH=/opt/venv/bin::/usr/bin"], [(1, "path-relative", False)]),
    (["PATH=$HOME/bin:/opt/venv/bin:$PATH"], []),
])
def test_each_problem_is_reported_on_its_line(lines: list[str], expected: list[tuple[int, str, bool]]) -> None:
    assert problems_of(*lines) == expected


def test_a_clean_file_has_no_problems_and_exports_every_line() -> None:
    lines = ["PATH=/opt/venv/bin:$PATH\n", "LD_LIBRARY_PATH=/usr/local/cuda/lib64\n", "NCCL_SOCKET_IFNAME=^docker,lo\n",
             "PYTHONPATH=/work/src:/work/lib\n", "EXTRA_ARGS=--foo bar (baz); qux\n", "EMPTY=\n"]
    entries, problems = parse_deepspeed_env(lines, PATH)
    assert problems == []
    assert [(e.key, e.value, e.line) for e in entries] == [
        ("PATH", "/opt/venv/bin:$PATH", 1), ("LD_LIBRARY_PATH", "/usr/local/cuda/lib64", 2),
        ("NCCL_SOCKET_IFNAME", "^docker,lo", 3), ("PYTHONPATH", "/work/src:/work/lib", 4),
        ("EXTRA_ARGS", "--foo bar (baz); qux", 5), ("EMPTY", "", 6)]


def test_problem_messages_name_the_crash_and_the_place() -> None:
    _, problems = parse_deepspeed_env(["A=1", ""], PATH)
    assert problems[0].where == "/root/.deepspeed_env:2"
    assert "ValueError: not enough values to unpack (expected 2, got 1)" in problems[0].message
    assert problems[0].fix == "delete line 2"


def test_a_commented_entry_says_the_remote_command_is_commented_out() -> None:
    _, problems = parse_deepspeed_env(["# NCCL_DEBUG=INFO"], PATH)
    assert "every node starts nothing and exits 0" in problems[0].message


def test_only_the_value_after_the_first_equals_sign_counts() -> None:
    entries, problems = parse_deepspeed_env(["OPTS=--a=1 --b=2"], PATH)
    assert problems == [] and entries == [DsEnvEntry("OPTS", "--a=1 --b=2", 1)]


def test_old_deepspeed_without_quoting_breaks_on_spaces_but_accepts_quotes() -> None:
    assert problems_of('NAME="a b"', quotes_values=False) == []
    assert problems_of("NAME=a b", quotes_values=False) == [(1, "unquoted-special", True)]
    assert problems_of("NAME=a(b)", quotes_values=False) == [(1, "unquoted-special", True)]
    assert problems_of("PATH=/x/bin:$PATH", quotes_values=False) == []


def test_lines_with_or_without_newlines_read_the_same() -> None:
    assert parse_deepspeed_env(["A=1\n", "B=2\n"], PATH) == parse_deepspeed_env(["A=1", "B=2"], PATH)


@settings(max_examples=300)
@given(st.lists(st.text(max_size=40), max_size=12))
def test_random_text_never_crashes_the_parser(lines: list[str]) -> None:
    entries, problems = parse_deepspeed_env(lines, PATH)
    assert all(1 <= p.line <= len(lines) for p in problems)
    assert all(1 <= e.line <= len(lines) for e in entries)
    crashing = any("=" not in line for line in lines)
    assert crashing == any(p.code in ("blank-line", "comment-line", "missing-equals") for p in problems)


@settings(max_examples=200)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_random_file_contents_never_crash_the_parser(text: str) -> None:
    parse_deepspeed_env(text.split("\n"), PATH)
    parse_deepspeed_env(text.splitlines(keepends=True), PATH, quotes_values=False)


# ----------------------------------------------------------------------- against DeepSpeed itself

KEY = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True)  # not bash's own "_"
VALUE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(KEY, VALUE), max_size=8))
def test_exports_match_deepspeeds_own_add_export(pairs: list[tuple[str, str]]) -> None:
    multinode_runner = pytest.importorskip("deepspeed.launcher.multinode_runner")

    class Runner:
        exports: dict[str, str]

    runner = Runner()
    runner.exports = {}
    lines = [f"{key}={value}" for key, value in pairs]
    for line in lines:  # deepspeed/launcher/runner.py, verbatim
        key, val = line.split("=", maxsplit=1)
        multinode_runner.MultiNodeRunner.add_export(runner, key, val)
    entries, _ = parse_deepspeed_env(lines, PATH)
    expected = "".join(f"export {key}={val}; " for key, val in runner.exports.items())
    assert pdsh_export_prefix(entries) == expected


# A value wrapped whole in single quotes (``''``, ``'x'``) reads as a quoted value, which the checker rightly
# flags: DeepSpeed would keep the quotes. Such values are what the check is for, not what a file renders.
SAFE_VALUE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"$`\\'),
                     max_size=24).map(str.strip).filter(lambda v: not (len(v) >= 2 and v[0] == v[-1] == "'"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@settings(max_examples=40, deadline=None)
@given(st.dictionaries(KEY, SAFE_VALUE, min_size=1, max_size=5))
def test_rendered_files_reach_a_remote_shell_unchanged(values: dict[str, str]) -> None:
    text = render_deepspeed_env(DsEnvEntry(k, v) for k, v in values.items())
    entries, problems = parse_deepspeed_env(text.splitlines(), PATH)
    assert not [p for p in problems if p.breaks_launch]
    script = pdsh_export_prefix(entries) + " ".join(f'printf "%s\\0" "${{{key}}}";' for key in values)
    out = subprocess.run(["bash", "-c", script], capture_output=True, env={}, check=True).stdout
    assert out.decode().split("\0")[:-1] == list(values.values())


def test_a_quoted_value_with_a_space_really_is_cut_by_the_shell() -> None:
    entries, problems = parse_deepspeed_env(['NAME="a b"'], PATH)
    assert problems[0].breaks_launch
    out = subprocess.run(["bash", "-c", pdsh_export_prefix(entries) + 'printf "%s" "$NAME"'],
                         capture_output=True, env={}, check=False).stdout
    assert out == b"a"


# ----------------------------------------------------------------------------------- merge, render


def test_merge_overrides_in_place_appends_new_keys_and_reports_changes() -> None:
    existing, _ = parse_deepspeed_env(["A=1", "PATH=/x:$PATH", "B=2"], PATH)
    merged, changed = merge_deepspeed_env(existing, {"PATH": "/opt/venv/bin:$PATH", "NCCL_SOCKET_IFNAME": "eth0",
                                                     "A": "1"})
    assert [(e.key, e.value, e.line) for e in merged] == [
        ("A", "1", 1), ("PATH", "/opt/venv/bin:$PATH", 2), ("B", "2", 3), ("NCCL_SOCKET_IFNAME", "eth0", 4)]
    assert changed == ["PATH", "NCCL_SOCKET_IFNAME"]


def test_merging_the_same_updates_again_changes_nothing() -> None:
    updates = {"PATH": "/opt/venv/bin:$PATH", "CUDA_HOME": "/usr/local/cuda"}
    first, _ = merge_deepspeed_env([], updates)
    reread, _ = parse_deepspeed_env(render_deepspeed_env(first).splitlines(), PATH)
    second, changed = merge_deepspeed_env(reread, updates)
    assert changed == [] and second == first


def test_merge_collapses_duplicates_like_deepspeed() -> None:
    existing, _ = parse_deepspeed_env(["A=1", "B=2", "A=3"], PATH)
    merged, changed = merge_deepspeed_env(existing, {})
    assert [(e.key, e.value) for e in merged] == [("A", "3"), ("B", "2")]
    assert changed == [] and effective_values(merged) == effective_values(existing)


def test_render_writes_plain_key_value_lines() -> None:
    text = render_deepspeed_env([DsEnvEntry("PATH", "/opt/venv/bin:$PATH"), DsEnvEntry("EMPTY", "")])
    assert text == "PATH=/opt/venv/bin:$PATH\nEMPTY=\n"


@pytest.mark.parametrize("entry", [
    DsEnvEntry("MY-VAR", "x"), DsEnvEntry("A", 'say "hi"'), DsEnvEntry("A", "two\nlines"),
    DsEnvEntry("A", " padded "), DsEnvEntry("A", "ends\\"),
])
def test_render_refuses_entries_deepspeed_would_mangle(entry: DsEnvEntry) -> None:
    with pytest.raises(ValueError):
        render_deepspeed_env([entry])


# ------------------------------------------------------------------------------- rewriting a file


def test_a_quoted_value_is_mended_with_its_line_and_the_lints_reason() -> None:
    entries, notes = repair_deepspeed_env(["A=1", 'FOO="quoted value"', "# note", "B='x y'"], "n2:~/.deepspeed_env")
    assert [(e.key, e.value) for e in entries] == [("A", "1"), ("FOO", "quoted value"), ("B", "x y")]
    assert notes[0].startswith("n2:~/.deepspeed_env:2: removed the quotes around FOO's value (FOO's value is "
                               "already in double quotes")
    assert notes[1].startswith("n2:~/.deepspeed_env:4: removed the quotes around B's value")
    assert notes[2].startswith("n2:~/.deepspeed_env:3: left out (comment line")
    assert "it stays in the backup" in notes[2]


def test_a_value_that_cannot_be_written_is_left_out_and_said() -> None:
    entries, notes = repair_deepspeed_env(['X=a"b', "DIR=C:\\dir\\", "OK=1"], "f")
    assert [e.key for e in entries] == ["OK"]
    assert notes[0].startswith("f:1: left out X (X's value contains a double quote")
    assert notes[1].startswith("f:2: left out DIR (DIR's value ends with a backslash")


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30), max_size=8))
@settings(max_examples=200)
def test_any_file_can_be_rewritten_without_an_exception(lines: list[str]) -> None:
    update = update_deepspeed_env("\n".join(lines), {"PATH": "/env/bin:/usr/bin", "NCCL_SOCKET_IFNAME": "eth0"},
                                  "f", "/env/bin")
    entries, problems = parse_deepspeed_env(update.text.splitlines(), "f")
    assert not [p for p in problems if p.breaks_launch]
    assert effective_values(entries)["NCCL_SOCKET_IFNAME"] == "eth0"


def test_the_users_path_entries_are_kept_after_the_envs_bin() -> None:
    merged, said = merge_path("/custom/bin:/usr/bin", "/opt/env/bin", ["/opt/env/bin", "/usr/local/bin", "/usr/bin"])
    assert merged == "/opt/env/bin:/custom/bin:/usr/bin:/usr/local/bin"
    assert said == ["PATH: /opt/env/bin added first; kept /custom/bin, /usr/bin; added /usr/local/bin from this shell"]
    assert merge_path(merged, "/opt/env/bin", ["/opt/env/bin", "/usr/local/bin", "/usr/bin"]) == (merged, [])


def test_a_path_with_the_env_later_gets_it_moved_first() -> None:
    merged, said = merge_path("/usr/bin:/opt/env/bin", "/opt/env/bin", ["/usr/bin"])
    assert merged == "/opt/env/bin:/usr/bin"
    assert said == ["PATH: /opt/env/bin put first; kept /usr/bin"]


def test_an_update_says_each_change_and_a_second_one_changes_nothing() -> None:
    current = 'PATH=/custom/bin:/usr/bin\nFOO="quoted value"\n'
    values = {"PATH": "/opt/env/bin:/usr/bin", "NCCL_SOCKET_IFNAME": "eth0"}
    first = update_deepspeed_env(current, values, "n2:~/.deepspeed_env", "/opt/env/bin")
    assert first.text == "PATH=/opt/env/bin:/custom/bin:/usr/bin\nFOO=quoted value\nNCCL_SOCKET_IFNAME=eth0\n"
    assert first.changes[0].startswith("n2:~/.deepspeed_env:2: removed the quotes around FOO's value")
    assert first.changes[1:] == ["PATH: /opt/env/bin added first; kept /custom/bin, /usr/bin",
                                 "set NCCL_SOCKET_IFNAME=eth0"]
    second = update_deepspeed_env(first.text, values, "n2:~/.deepspeed_env", "/opt/env/bin")
    assert (second.text, second.changes) == (first.text, [])


def test_a_relative_path_entry_is_named_with_its_line() -> None:
    # issue 19, W6
    _, problems = parse_deepspeed_env(["NCCL_DEBUG=INFO", "PATH=envs/small/bin:/usr/bin"], PATH)
    assert [(p.where, p.code) for p in problems] == [(f"{PATH}:2", "path-relative")]
    assert "PATH entry 'envs/small/bin' is not an absolute path" in problems[0].message


def test_a_relative_entry_for_the_env_written_earlier_is_replaced_by_its_absolute_path() -> None:
    # issue 19, W6: a rerun with the absolute --python mends what a relative one wrote.
    merged, said = merge_path("envs/small/bin:/custom/bin:/usr/bin", "/home/me/envs/small/bin",
                              ["/home/me/envs/small/bin", "/usr/bin"])
    assert merged == "/home/me/envs/small/bin:/custom/bin:/usr/bin"
    assert said == ["PATH: /home/me/envs/small/bin added first; replaced the relative envs/small/bin by it; "
                    "kept /custom/bin, /usr/bin"]
    update = update_deepspeed_env("PATH=./envs/small/bin:/usr/bin\n", {"PATH": "/home/me/envs/small/bin"}, "f",
                                  "/home/me/envs/small/bin")
    assert update.text == "PATH=/home/me/envs/small/bin:/usr/bin\n"
    _, problems = parse_deepspeed_env(update.text.splitlines(), "f")
    assert problems == []


def test_relative_entries_of_the_launching_shell_are_not_written_and_the_users_own_are_kept() -> None:
    merged, _ = merge_path("tools/bin:/usr/bin", "/opt/env/bin", ["/opt/env/bin", ".", "bin", "/usr/local/bin"])
    assert merged == "/opt/env/bin:tools/bin:/usr/bin:/usr/local/bin"


def test_the_envs_bin_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        merge_path(None, "envs/small/bin", [])
