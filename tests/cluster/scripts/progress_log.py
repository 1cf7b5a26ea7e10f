"""A training job's progress lines as DeepSpeed prints them, one step a second, until killed.

Its engine reports ``step=N, skipped=S, lr=..., mom=...`` through DeepSpeed's own logger (stamped with
the time of writing) every ``steps_per_print`` steps when the config's ``log_level`` is ``info``; a
plain training script prints ``step N loss X`` beside it. A launch target for the monitor's cluster
tests: it needs DeepSpeed, not a distributed launch.
"""

import time

from deepspeed.utils.logging import log_dist, set_log_level_from_string

set_log_level_from_string("info")
step = 0
while True:
    step += 1
    time.sleep(1.0)
    log_dist(f"step={step}, skipped=0, lr=[0.001], mom=[(0.9, 0.999)]", ranks=[0])
    print(f"step {step} loss {1.0 / step:.5f}", flush=True)
