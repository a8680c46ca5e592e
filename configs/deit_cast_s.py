r"""Supervised (DeiT recipe) training of CAST-S on ImageNet-1K.

    python -m cast_jax.main --config=configs/deit_cast_s.py --workdir=/tmp/deit_cast_s \
        --config.data.data_dir=~/tensorflow_datasets

Original (deit/main_suppix.py, 8 GPUs x 128): 300 epochs, 5 warmup (per-epoch cosine, warmup 1e-6, min 1e-5,
with the original's off-by-one: epoch e uses the schedule of e-1), AdamW 5e-4 x 1024/512, weight decay 0.05
except 1-D / biases / pos_embed / cls_token, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment
m9-mstd0.5, random erasing 0.25, repeated augmentation x3, drop path 0.1, weight EMA 0.99996.
Published ImageNet-1K top-1: 80.4 (CAST-S, supervised).
"""

from cast_jax.train.config_lib import finalize, supervised_defaults


def get_config(arg=None):
  c = supervised_defaults()
  c.model.update(kind='cast_deit', variant='small')
  return finalize(c, arg)
