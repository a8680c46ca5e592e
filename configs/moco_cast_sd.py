r"""MoCo-v3 pretraining of CAST-SD (deeper first stage, 6-3-3-3 blocks) on ImageNet-1K.

    python -m cast_jax.main --config=configs/moco_cast_sd.py --workdir=/tmp/moco_cast_sd \
        --config.data.data_dir=~/tensorflow_datasets

Original recipe as moco_cast_s (100 epochs, 10 warmup, AdamW 1.5e-4, wd 0.1, batch 256, T 0.2, m 0.99->1).
Published ImageNet-1K linear-probe top-1: 69.1 (CAST-SD).
"""

from cast_jax.train.config_lib import finalize, moco_defaults


def get_config(arg=None):
  c = moco_defaults()
  c.model.update(kind='cast', variant='small_deep')

  return finalize(c, arg)
