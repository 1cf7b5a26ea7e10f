"""Config files are strict JSON; every mistake is named at path:line:col, and keys keep their place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterkit.cli import main
from clusterkit.dsconfig.load import DsConfig, load_ds_config, parse_ds_config
from clusterkit.errors import InputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dsconfig"


@pytest.mark.parametrize(
    ("text", "line", "column", "needle"),
    [
        ('{\n  "a": 1,\n  "b": 2,\n}\n', 3, 9, "trailing comma after the last member of an object"),
        ('{"a": [1, 2,]}', 1, 12, "trailing comma after the last item of an array"),
        ('{\n  // ZeRO settings\n  "a": 1\n}', 2, 3, "comment; JSON has no comments"),
        ('{\n  "a": 1, # note\n  "b": 2\n}', 2, 11, "comment; JSON has no comments"),
        ("{'a': 1}", 1, 2, "single-quoted string"),
        ('{\n  "a": 1\n  "b": 2\n}', 2, 9, "missing ','"),
        ('{"enabled": True}', 1, 13, "True is Python, not JSON: write true"),
        ('{"device": cpu}', 1, 12, "unquoted value 'cpu'"),
        ('{stage: 3}', 1, 2, "unquoted key 'stage'"),
        ('{"a": 1} {"b": 2}', 1, 10, "unexpected text after the end"),
        ('{"a": "x', 1, 7, "string is never closed"),
        ('{"a": {"b": 1}', 1, 15, "file ends early"),
    ],
)
def test_json_mistakes_are_named_with_line_and_column(text: str, line: int, column: int, needle: str) -> None:
    with pytest.raises(InputError) as err:
        parse_ds_config(text, "ds.json")
    assert (err.value.path, err.value.line, err.value.column) == ("ds.json", line, column)
    assert needle in str(err.value)
    assert str(err.value).startswith(f"ds.json:{line}:{column}: ")


def test_a_trailing_comma_says_deepspeed_alone_would_have_accepted_it() -> None:
    with pytest.raises(InputError) as err:
        parse_ds_config('{"a": 1,}')
    assert "DeepSpeed alone reads configs with hjson and would accept this" in str(err.value)
    assert "json.load" in str(err.value)


def test_duplicate_keys_are_refused_like_deepspeed_does_naming_both_lines() -> None:
    with pytest.raises(InputError) as err:
        load_ds_config(FIXTURES / "duplicate_key.json")
    assert (err.value.line, err.value.column) == (6, 3)
    assert "duplicate key 'zero_optimization' (first on line 3)" in str(err.value)


def test_nested_duplicate_keys_name_the_full_key_path() -> None:
    with pytest.raises(InputError, match=r"duplicate key 'zero_optimization\.stage'"):
        parse_ds_config('{"zero_optimization": {"stage": 1,\n "stage": 2}}')


@pytest.mark.parametrize(("text", "needle"), [("[1, 2]", "not an array"), ('"x"', "not a string"),
                                              ("", "empty file"), ("   \n", "empty file")])
def test_the_top_level_must_be_an_object(text: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        parse_ds_config(text)


def test_keys_remember_where_they_were_written() -> None:
    cfg = load_ds_config(FIXTURES / "plain_deepspeed_zero1.json")
    assert cfg.positions[("train_batch_size",)] == (2, 3)
    assert cfg.where(("zero_optimization", "stage")) == f"{cfg.path}:30:5"
    assert cfg.where(("zero_optimization", "offload_param", "device")) == f"{cfg.path}:29:3"
    assert cfg.where(("no_such_key",)) == cfg.path
    assert cfg.get("optimizer", "params", "betas") == [0.9, 0.999]
    assert cfg.get("optimizer", "nope", default=7) == 7


def test_a_utf8_bom_is_tolerated() -> None:
    assert parse_ds_config('\ufeff{"a": 1}').data == {"a": 1}


def test_missing_and_unreadable_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="DeepSpeed config not found"):
        load_ds_config(tmp_path / "nope.json")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputError, match="not UTF-8"):
        load_ds_config(binary)


def test_bad_json_through_the_cli_is_one_line_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "trailing_comma.json"
    code = main(["config", "check", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"clusterkit: error: {path}:5:25: trailing comma")
    assert err.count("\n") == 1 and "Traceback" not in err


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6), st.sampled_from([None, 0, 2, 4]))
def test_any_json_object_parses_to_what_json_loads_gives_with_every_key_located(
        data: dict[str, object], indent: int | None) -> None:
    text = json.dumps(data, indent=indent)
    cfg = parse_ds_config(text)
    assert cfg.data == json.loads(text)
    for key in data:
        line, column = cfg.positions[(key,)]
        offset = sum(len(row) + 1 for row in text.split("\n")[:line - 1]) + column - 1
        assert json.JSONDecoder().raw_decode(text, offset)[0] == key


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_either_parses_or_raises_an_input_error_with_a_place(text: str) -> None:
    try:
        cfg = parse_ds_config(text, "x.json")
    except InputError as exc:
        assert exc.path == "x.json"
    else:
        assert isinstance(cfg, DsConfig)
