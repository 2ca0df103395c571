"""The trainer settings every timing benchmark shares: a measurement, not a training run (no logging to trackers,
no checkpoints, no progress bars, a tiny learning rate, a fixed seed, one log line per step)."""

MEASUREMENT_ARGS = dict(
    logging_steps=1,
    learning_rate=1e-6,
    report_to=[],
    save_strategy="no",
    seed=0,
    disable_tqdm=True,
)
