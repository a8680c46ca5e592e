r"""MoCo-v3 pretraining of CAST-S on ImageNet-100 (200 epochs, 20 warmup).

    python -m cast_jax.main --config=configs/moco_cast_s_in100.py --workdir=/tmp/moco_cast_s_in100 \
        --config.data.path=IN100_ROOT

Original: scripts/moco/train_imagenet100_cast.sh; the 100-class subset as an ImageNet-layout folder
(--config.data.name=folder --config.data.path=DIR with DIR/train, DIR/val). Linear probe lr 0.8 (lincls).
"""

from cast_jax.train.config_lib import finalize, moco_defaults


def get_config(arg=None):
  c = moco_defaults()
  c.model.update(kind='cast', variant='small')
  c.data.update(name='folder', train_split='train', eval_split='val')
  c.num_epochs, c.warmup_epochs = 200, 20
  c.evals.knn.update(num_classes=100, num_train=-1)  # the whole train split as the bank
  return finalize(c, arg)
