r"""MoCo-v3 pretraining of the ViT-S baseline (vit_conv_small: conv stem, patch 16) on ImageNet-1K.

    python -m cast_jax.main --config=configs/moco_vit_s.py --workdir=/tmp/moco_vit_s \
        --config.data.data_dir=~/tensorflow_datasets

Original: scripts/moco/train_imagenet1k.sh (main_moco, vit_conv_small), same optimisation as CAST.
Published ImageNet-1K linear-probe top-1: 67.9 (ViT-S).
"""

from cast_jax.train.config_lib import finalize, moco_defaults


def get_config(arg=None):
  c = moco_defaults()
  c.model.update(kind='vit_conv', variant='small')
  return finalize(c, arg)
