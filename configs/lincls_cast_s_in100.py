r"""Linear probe of a MoCo-pretrained CAST-S on ImageNet-100 (lr 0.8, batch 256, 1000-way head as the original).

    python -m cast_jax.main --config=configs/lincls_cast_s_in100.py --workdir=/tmp/lincls_in100 \
        --config.init_checkpoint=/tmp/moco_cast_s_in100 --config.data.path=IN100_ROOT

Original: scripts/moco/train_imagenet100_cast.sh's probe, --lr 0.8 -b 256, 90 epochs.
"""

from cast_jax.train.config_lib import finalize, lincls_defaults


def get_config(arg=None):
  c = lincls_defaults()
  c.data.update(name='folder', train_split='train', eval_split='val')
  c.batch_size = 256
  c.base_lr = 0.8
  return finalize(c, arg)
