"""Training: the loop (``loop.train_and_evaluate``), the original's objectives as steps (``moco``, ``supervised``,
``segmentation``; ``spml_step`` is not wired into the loop yet), optimizers and schedules, checkpoints, metrics
and multi-host plumbing."""
