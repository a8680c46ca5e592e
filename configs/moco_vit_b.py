r"""MoCo-v3 pretraining of the ViT-B baseline (vit_conv_base) on ImageNet-1K.

    python -m cast_jax.main --config=configs/moco_vit_b.py --workdir=/tmp/moco_vit_b \
        --config.data.data_dir=~/tensorflow_datasets

Same optimisation as CAST. Published ImageNet-1K linear-probe top-1: 72.5 (ViT-B).
"""

from cast_jax.train.config_lib import finalize, moco_defaults


def get_config(arg=None):
  c = moco_defaults()
  c.model.update(kind='vit_conv', variant='base')

  return finalize(c, arg)
