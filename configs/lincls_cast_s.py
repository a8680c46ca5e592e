r"""Linear probe of a MoCo-pretrained CAST-S on ImageNet-1K (MoCo-v3 main_lincls).

    python -m cast_jax.main --config=configs/lincls_cast_s.py --workdir=/tmp/lincls_cast_s \
        --config.init_checkpoint=cast_small_in1k.npz --config.data.data_dir=~/tensorflow_datasets

--config.init_checkpoint takes a converted published checkpoint (python -m cast_jax.convert) or the workdir
of one of our MoCo runs. Original: frozen backbone in eval mode, linear head on the normalized cls feature,
SGD momentum 0.9, no weight decay, lr 30 x 1024/256 = 120, 90 epochs, per-epoch cosine; the best top-1 is
reported. Published ImageNet-1K top-1: 68.1 (CAST-S).
"""

from cast_jax.train.config_lib import finalize, lincls_defaults


def get_config(arg=None):
  c = lincls_defaults()
  c.model.update(kind='cast', variant='small')
  return finalize(c, arg)
