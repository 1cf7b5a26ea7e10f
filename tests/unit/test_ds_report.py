"""ds_report text becomes ops with the warnings that explain them, plus the general-info lines."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from clusterkit.node.collect.ds_report import (
    GENERAL_WARNINGS_KEY,
    parse_ds_general_info,
    parse_ds_report,
    parse_ninja_status,
    strip_ansi,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H100_REPORT = (FIXTURES / "h100-x1" / "ds_report.txt").read_text()
GREEN, YELLOW, END = "\x1b[92m", "\x1b[93m", "\x1b[0m"


def test_every_op_of_the_h100_report_is_listed_in_order() -> None:
    ops = parse_ds_report(H100_REPORT)
    assert len(ops) == 23
    assert [op.name for op in ops[:3]] == ["async_io", "fused_adam", "cpu_adam"]
    assert ops[-1].name == "stochastic_transformer"
    assert not any(op.installed for op in ops)


def test_async_io_is_incompatible_and_carries_its_libaio_warnings() -> None:
    async_io = {op.name: op for op in parse_ds_report(H100_REPORT)}["async_io"]
    assert not async_io.compatible
    assert async_io.warnings == [
        "async_io requires the dev libaio .so object and headers but these were not found.",
        "async_io: please install the libaio-dev package with apt",
        "If libaio is already installed (perhaps from source), try setting the CFLAGS and LDFLAGS "
        "environment variables to where it can be found.",
    ]


def test_warnings_go_to_the_op_probed_after_them_not_to_an_earlier_one() -> None:
    ops = {op.name: op for op in parse_ds_report(H100_REPORT)}
    assert ops["gds"].warnings[0].startswith("gds requires the dev libaio")
    assert len(ops["gds"].warnings) == 3
    assert ops["evoformer_attn"].warnings == [
        "Unable to locate CUTLASS. Install nvidia-cutlass, clone CUTLASS next to DeepSpeed, "
        "or set CUTLASS_PATH to the CUTLASS checkout."]
    assert not ops["evoformer_attn"].compatible
    assert ops["fused_adam"].compatible and ops["fused_adam"].warnings == []
    assert ops["dc"].warnings == []


def test_general_info_lines_are_kept_by_name() -> None:
    info = parse_ds_general_info(H100_REPORT)
    assert info["torch version"] == "2.11.0+cu130"
    assert info["torch cuda version"] == "13.0"
    assert info["nvcc version"] == "13.0"
    assert info["deepspeed info"] == "0.19.8, unknown, unknown"
    assert info["deepspeed wheel compiled w."] == "torch 0.0, cuda 0.0"
    assert info["shared memory (/dev/shm) size"] == "128.00 GB"
    assert info["torch install path"] == "['/opt/venv/lib/python3.12/site-packages/torch']"
    assert GENERAL_WARNINGS_KEY not in info


def test_ninja_status_is_read_from_the_report() -> None:
    assert parse_ninja_status(H100_REPORT) is True
    assert parse_ninja_status(f"ninja .................. \x1b[91m[FAIL]{END}\n") is False
    assert parse_ninja_status("no such line") is None


def test_an_op_name_longer_than_the_dots_is_still_an_op() -> None:
    # DeepSpeed 0.19.8 on CPU prints this: the name eats all 23 columns, so no dots remain.
    text = (f"op name ................ installed .. compatible\n"
            f"deepspeed_not_implemented  {YELLOW}[NO]{END} ....... {GREEN}[OKAY]{END}\n")
    [op] = parse_ds_report(text)
    assert (op.name, op.installed, op.compatible) == ("deepspeed_not_implemented", False, True)


def test_an_installed_op_reads_yes() -> None:
    text = ("op name ................ installed .. compatible\n"
            f"cpu_adam ............... {GREEN}[YES]{END} ...... {GREEN}[OKAY]{END}\n")
    [op] = parse_ds_report(text)
    assert op.installed and op.compatible


def test_small_shm_warnings_of_the_general_section_are_kept() -> None:
    # The two lines env_report.get_shm_size() prints under 512 MB, colours included.
    text = (
        "DeepSpeed general environment info:\n"
        "shared memory (/dev/shm) size .... 64.00 MB\n"
        f" {YELLOW} [WARNING] /dev/shm size might be too small, if running in docker increase to at least "
        f"--shm-size='1gb' {END}\n"
        f" {YELLOW} [WARNING] see more details about NCCL requirements: https://docs.nvidia.com/deeplearning/"
        f"nccl/user-guide/docs/troubleshooting.html#sharing-data {END}\n"
    )
    info = parse_ds_general_info(text)
    assert info["shared memory (/dev/shm) size"] == "64.00 MB"
    assert info[GENERAL_WARNINGS_KEY].splitlines()[0].startswith("/dev/shm size might be too small")
    assert len(info[GENERAL_WARNINGS_KEY].splitlines()) == 2


def test_a_failed_nvcc_probe_value_is_kept_without_colours() -> None:
    text = ("DeepSpeed general environment info:\n"
            "nvcc version ..................... \x1b[91m [FAIL] cannot find CUDA_HOME via "
            f"torch.utils.cpp_extension.CUDA_HOME=None {END}\n")
    assert parse_ds_general_info(text)["nvcc version"] == (
        "[FAIL] cannot find CUDA_HOME via torch.utils.cpp_extension.CUDA_HOME=None")


def test_text_without_an_op_table_gives_no_ops() -> None:
    assert parse_ds_report("Traceback (most recent call last):\nImportError: boom\n") == []
    assert parse_ds_general_info("") == {}


def test_strip_ansi_removes_colour_codes_only() -> None:
    assert strip_ansi(f"{YELLOW}[NO]{END} x") == "[NO] x"


@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    for op in parse_ds_report(text):
        assert op.name
    parse_ds_general_info(text)
    parse_ninja_status(text)


REPORT_PIECES = [*H100_REPORT.splitlines(), "", "\x1b[93m", "op name", "x ... [", "[WARNING]"]


@given(st.lists(st.sampled_from(REPORT_PIECES), max_size=80))
def test_shuffled_and_truncated_real_lines_never_raise(lines: list[str]) -> None:
    text = "\n".join(lines)
    names = {op.name for op in parse_ds_report(text)}
    assert names <= {line.split()[0] for line in strip_ansi(H100_REPORT).splitlines() if line.split()}
    parse_ds_general_info(text)
