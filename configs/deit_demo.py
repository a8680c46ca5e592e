r"""Supervised (DeiT recipe) training of the demo-sized CAST on PartWorld, on one CPU (about 9 minutes).

    python -m cast_jax.main --config=configs/deit_demo.py --workdir=/tmp/cast_deit_demo

The demo's model, data and budget (8 epochs of 4096 images at 64 px) with the DeiT recipe: RandAugment,
random erasing, mixup/cutmix, label smoothing, repeated augmentation, drop path 0.1, AdamW, per-epoch cosine.
The weight EMA decays faster (0.998) than the original's 0.99996, which is meant for 375k steps.
"""

from cast_jax.train.config_lib import finalize, supervised_defaults, use_demo_model_and_data


def get_config(arg=None):
  # (crop_scale is unused here: the DeiT recipe crops with timm's own scale range.)
  c = use_demo_model_and_data(supervised_defaults(), superpixels='deit')
  c.model.kind = 'cast_deit'
  c.batch_size = 64
  c.num_epochs = 8
  c.warmup_epochs = 1
  c.base_lr = 4e-3  # x 64/512 = 5e-4
  c.ema_decay = 0.998
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.eval_every_steps = 256
  c.evals.knn.every_steps = None  # kNN too (the ImageNet recipe has none), at eval_every_steps
  c.evals.hierarchy.num_images = 4
  return finalize(c, arg)
