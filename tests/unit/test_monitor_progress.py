"""The job's progress read from its log: DeepSpeed's lines, tqdm bars, the HF Trainer's dicts, a followed file."""

from __future__ import annotations

import os
from pathlib import Path

from clusterkit.monitor.progress import LogFollower, Progress, ProgressParser, parse_line

# As deepspeed/runtime/engine.py (_report_progress) and deepspeed/utils/timer.py (ThroughputTimer) print them.
DS_STEP = ("[2026-05-28 20:26:40,121] [INFO] [logging.py:128:log_dist] [Rank 0] step=120, skipped=2, lr=[0.001], "
           "mom=[(0.9, 0.999)]")
DS_SPEED = ("[2026-05-28 20:26:40,122] [INFO] [timer.py:264:stop] epoch=0/micro_step=120/global_step=120, "
            "RunningAvgSamplesPerSec=412.5, CurrSamplesPerSec=398.25, MemAllocated=1.2GB, MaxMemAllocated=3.4GB")


def ds_step(step: int, second: float) -> str:
    """DeepSpeed's steps_per_print line, stamped by its logger ``second`` s after 20:26:00, through pdsh."""
    stamp = f"2026-05-28 20:26:{int(second):02d},{int(second % 1 * 1000):03d}"
    return f"node2: [{stamp}] [INFO] [logging.py:128:log_dist] [Rank 0] step={step}, skipped=0, lr=[0.001]"


def test_deepspeed_progress_lines_give_step_skipped_steps_and_samples_per_second() -> None:
    progress = parse_line(DS_STEP, Progress(), 10.0)
    assert (progress.step, progress.skipped, progress.updated_at) == (120, 2, 10.0)
    progress = parse_line(DS_SPEED, progress, 10.5)
    assert (progress.samples_per_s, progress.avg_samples_per_s) == (398.25, 412.5)


def test_loss_comes_from_hf_trainer_dicts_and_plain_lines_and_a_printed_step_time() -> None:
    progress = parse_line("{'loss': 1.2345, 'grad_norm': 3.1, 'learning_rate': 1e-05, 'epoch': 0.1}", Progress(), 1.0)
    assert progress.loss == 1.2345 and progress.step is None
    progress = parse_line("zero smoke: step 3 loss 0.12500 (0.250 s)", progress, 2.0)
    assert (progress.step, progress.loss, progress.step_time_s, progress.step_time_from) == (3, 0.125, 0.25, "printed")
    assert parse_line("micro_step=9 nothing else", progress, 5.0) == progress


def test_a_tqdm_bar_gives_the_step_and_its_time_per_step() -> None:
    progress = parse_line(" 5%|▌         | 50/1000 [00:50<15:50,  1.25s/it]", Progress(), 1.0)
    assert (progress.step, progress.step_time_s) == (50, 1.25)
    progress = parse_line(" 6%|▌         | 60/1000 [00:55<03:08,  4.00it/s, loss=0.5]", progress, 2.0)
    assert (progress.step, progress.step_time_s, progress.loss) == (60, 0.25, 0.5)


def test_steps_read_together_have_no_step_time_and_never_zero() -> None:
    """issue 19, M1: `monitor --once --log` read a live run's whole log at one instant and showed
    `0 s/step` against a real ~1 s/step. Lines read together carry no pace of their own."""
    parser = ProgressParser()
    for step in range(1, 6):
        parser.feed(f"step {step} loss 0.5", 100.0, read_live=False)  # the backlog, found at once
    assert (parser.progress.step, parser.progress.step_time_s) == (5, None)
    parser.feed("step 6 loss 0.5", 200.0, read_live=True)
    parser.feed("step 7 loss 0.5", 200.0, read_live=True)  # a burst: two steps in one read
    assert parser.progress.step_time_s is None
    parser.feed("step 8 loss 0.5", 202.0, read_live=True)
    assert (parser.progress.step_time_s, parser.progress.step_time_from) == (1.0, "arrival")  # from step 6 to 8 in 2 s


def test_deepspeeds_logger_timestamps_give_the_real_step_time_even_from_a_backlog() -> None:
    """issue 19, M1: DeepSpeed's steps_per_print lines carry the time they were written."""
    parser = ProgressParser()
    for step, second in ((10, 1.0), (20, 11.5), (30, 21.0)):  # steps_per_print=10 at about 1 s/step
        parser.feed(ds_step(step, second), 500.0, read_live=False)
        parser.feed(DS_SPEED.replace("global_step=120", f"global_step={step}"), 500.0, read_live=False)
    assert parser.progress.step == 30
    assert parser.progress.step_time_s is not None and abs(parser.progress.step_time_s - 1.0) < 1e-6
    assert parser.progress.step_time_from == "timestamps"


def test_a_new_run_in_the_same_log_is_timed_on_its_own() -> None:
    parser = ProgressParser()
    for step, second in ((10, 0.0), (20, 10.0), (5, 30.0), (10, 35.0)):
        parser.feed(ds_step(step, second), 0.0, read_live=False)
    assert (parser.progress.step, parser.progress.step_time_s) == (10, 1.0)


def test_a_followed_log_is_read_as_it_grows_and_dated_by_when_it_was_written(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("zero smoke: step 1 loss 0.5 (0.1 s)\nzero smoke: step 2 lo")
    os.utime(log, (50.0, 50.0))
    clock = {"now": 100.0}
    follower = LogFollower(log, clock=lambda: clock["now"])
    assert follower.check() is None
    progress = follower.poll()
    assert (progress.step, progress.updated_at) == (1, 50.0)  # already there: as old as the file's last write
    with log.open("a") as f:
        f.write("ss 0.25 (0.1 s)\r\n 3/10 [00:03<00:07,  1.00s/it]\r 4/10 [00:04<00:06,  1.00s/it]\n")
    clock["now"] = 101.0
    progress = follower.poll()
    assert (progress.step, progress.loss, progress.updated_at, progress.error) == (4, 0.25, 101.0, None)


def test_a_log_that_cannot_be_read_is_an_error_beside_the_last_progress_read(tmp_path: Path) -> None:
    """issue 19, M1: a nonexistent --log printed `job: no step yet` with no error."""
    log = tmp_path / "train.log"
    follower = LogFollower(log, clock=lambda: 1.0)
    assert follower.check() == f"cannot read {log}: No such file or directory"
    assert follower.poll().error == f"cannot read {log}: No such file or directory"
    assert follower.progress.describe() == f"cannot read {log}: No such file or directory (last read: no step yet)"
    log.write_text("step 7\n")
    assert (follower.poll().step, follower.progress.error) == (7, None)
    log.unlink()
    assert (follower.poll().step, follower.progress.error) == (7, f"cannot read {log}: No such file or directory")
    assert LogFollower(tmp_path).check() == f"cannot read {tmp_path}: Is a directory"


def test_a_recorded_progress_comes_back_whole_and_wrong_types_are_left_out() -> None:
    progress = Progress(step=12, loss=0.5, step_time_s=1.0, step_time_from="timestamps", updated_at=99.5)
    assert Progress.from_record(progress.to_record()) == progress
    assert Progress.from_record({"step": "12", "loss": True, "error": 3, "samples_per_s": 7}) == \
        Progress(samples_per_s=7.0)
    assert Progress.from_record(["not", "a", "dict"]) == Progress()
