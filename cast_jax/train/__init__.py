"""Training: the loop (``loop.train_and_evaluate``), the original's objectives as steps (``moco``, ``supervised``,
``segmentation``, ``spml_finetune`` on ``spml_step``), optimizers and schedules, checkpoints, metrics
and multi-host plumbing."""
