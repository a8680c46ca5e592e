r"""Supervised (DeiT recipe) training of the demo-sized CAST on PartWorld, on one CPU (about 15 minutes).

    python -m cast_jax.main --config=configs/deit_demo.py --workdir=/tmp/cast_deit_demo

The demo's model, data and budget (8 epochs of 4096 images at 64 px) with the DeiT recipe: RandAugment,
random erasing, mixup/cutmix, label smoothing, repeated augmentation, drop path 0.1, AdamW, per-epoch cosine.
The weight EMA decays faster (0.998) than the original's 0.99996, which is meant for 375k steps.
"""

from cast_jax.train.config_lib import finalize, supervised_defaults


def get_config(arg=None):
  c = supervised_defaults()
  c.model.update(kind='cast_deit', variant='small', image_size=64, embed_dim=96, depth=(2, 2, 2, 1), num_heads=4,
                 num_clusters=(16, 8, 4, 2), max_segments=64, num_classes=8)
  c.data.update(name='partworld', train_split='train', eval_split='validation', image_size=64,
                source_image_size=96, eval_resize_ratio=1.0, num_train_examples=4096, num_eval_examples=512,
                num_workers=0, read_threads=2, superpixels='deit',
                superpixel_overrides={'num_segments': 49, 'iterations': 10})
  c.batch_size = 64
  c.num_epochs = 8
  c.warmup_epochs = 1
  c.base_lr = 4e-3  # x 64/512 = 5e-4
  c.ema_decay = 0.998
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.eval_every_steps = 256
  c.knn.update(enabled=True, train_split='train', num_train=2048, num_test=512, batch_size=128, num_classes=8)
  c.pictures.num_images = 4
  return finalize(c, arg)
