r"""MoCo-v3 pretraining of CAST-S on ImageNet-1K, the original's recipe.

    python -m cast_jax.main --config=configs/moco_cast_s.py --workdir=/tmp/moco_cast_s \
        --config.data.data_dir=~/tensorflow_datasets

Original (scripts/moco/train_imagenet1k_cast.sh): 100 epochs, 10 warmup, AdamW 1.5e-4 (x batch/256),
weight decay 0.1, batch 256, T 0.2, momentum 0.99 -> 1 (cosine). Published ImageNet-1K linear-probe top-1:
68.1 (CAST-S).
"""

from cast_jax.train.config_lib import finalize, moco_defaults


def get_config(arg=None):
  c = moco_defaults()
  c.model.update(kind='cast', variant='small')
  return finalize(c, arg)
