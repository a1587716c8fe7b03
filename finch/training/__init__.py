"""The training loop: `trainer` (the `Trainer` and `train()`), `evaluation` (`evaluate`/`predict`), `readback`
(evaluation outputs to the host, no sync per batch),
`log_and_save` (logging, metrics files, `save_model`), `hf_methods` (HF methods scripts call), `callbacks` (the
handler, early stopping, progress, the JSONL log), `optim`, `nonfinite` (the NaN/Inf guard), `dropout` (CPU dropout),
`preemption` (SIGTERM), `freezing` (`--freeze`).
"""
