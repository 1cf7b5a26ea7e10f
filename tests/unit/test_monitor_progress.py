"""The job's progress read from its log: DeepSpeed's lines, the HF Trainer's dicts, a followed file."""

from __future__ import annotations

from pathlib import Path

from clusterkit.monitor.progress import LogFollower, Progress, parse_line

# As deepspeed/runtime/engine.py (_report_progress) and deepspeed/utils/timer.py (ThroughputTimer) print them.
DS_STEP = ("[2026-05-28 20:26:40,121] [INFO] [logging.py:128:log_dist] [Rank 0] step=120, skipped=2, lr=[0.001], "
           "mom=[(0.9, 0.999)]")
DS_SPEED = ("[2026-05-28 20:26:40,122] [INFO] [timer.py:264:stop] epoch=0/micro_step=120/global_step=120, "
            "RunningAvgSamplesPerSec=412.5, CurrSamplesPerSec=398.25, MemAllocated=1.2GB, MaxMemAllocated=3.4GB")


def test_deepspeed_progress_lines_give_step_skipped_steps_and_samples_per_second() -> None:
    progress = parse_line(DS_STEP, Progress(), 10.0)
    assert (progress.step, progress.skipped, progress.updated_at) == (120, 2, 10.0)
    progress = parse_line(DS_SPEED, progress, 10.5)
    assert (progress.samples_per_s, progress.avg_samples_per_s) == (398.25, 412.5)


def test_loss_comes_from_hf_trainer_dicts_and_plain_lines_and_step_time_from_the_pace() -> None:
    progress = parse_line("{'loss': 1.2345, 'grad_norm': 3.1, 'learning_rate': 1e-05, 'epoch': 0.1}", Progress(), 1.0)
    assert progress.loss == 1.2345 and progress.step is None
    progress = parse_line("zero smoke: step 3 loss 0.12500 (0.250 s)", progress, 2.0)
    assert (progress.step, progress.loss, progress.step_time_s) == (3, 0.125, 0.25)
    progress = parse_line("train step 7", progress, 4.0)
    assert progress.step_time_s == 0.5  # 4 steps in 2 s
    assert parse_line("micro_step=9 nothing else", progress, 5.0) == progress


def test_a_followed_log_is_read_as_it_grows_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    follower = LogFollower(log, clock=lambda: 1.0)
    assert follower.poll() == Progress() and follower.error is not None and "cannot read" in follower.error
    log.write_text("zero smoke: step 1 loss 0.5 (0.1 s)\nzero smoke: step 2 lo")
    assert follower.poll().step == 1
    with log.open("a") as f:
        f.write("ss 0.25 (0.1 s)\n")
    assert (follower.poll().step, follower.progress.loss, follower.error) == (2, 0.25, None)
