"""The progress line printed when stdout is not a terminal."""

from finch.callbacks import format_log_line
from finch.state import TrainerState


def test_eta_counts_only_the_steps_this_run_has_done():
    state = TrainerState(global_step=60, max_steps=100)
    line = format_log_line({"loss": 0.5}, state, elapsed=10.0, started_step=50)  # resumed at 50: 10 steps in 10 s
    assert "loss 0.5" in line and "elapsed 10s" in line and "eta 40s" in line


def test_evaluate_outside_training_prints_no_times():
    line = format_log_line({"eval_loss": 0.25}, TrainerState(), elapsed=None)
    assert line == "step 0/0 | epoch 0.00 | eval_loss 0.25"
