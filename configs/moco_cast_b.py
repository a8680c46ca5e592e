r"""MoCo-v3 pretraining of CAST-B on ImageNet-1K.

    python -m cast_jax.main --config=configs/moco_cast_b.py --workdir=/tmp/moco_cast_b \
        --config.data.data_dir=~/tensorflow_datasets

Original recipe as moco_cast_s (the docs say `-a cast_base`). Published ImageNet-1K linear-probe top-1: 72.4 (CAST-B).
"""

from cast_jax.train.config_lib import finalize, moco_defaults


def get_config(arg=None):
  c = moco_defaults()
  c.model.update(kind='cast', variant='base')

  return finalize(c, arg)
