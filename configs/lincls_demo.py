r"""Linear probe of the demo's MoCo-pretrained CAST on PartWorld (8 classes), on one CPU.

    python -m cast_jax.main --config=configs/lincls_demo.py --workdir=/tmp/cast_demo_lincls \
        --config.init_checkpoint=/tmp/cast_demo
    # the ViT baseline: add --config.model.kind=vit_conv and point init_checkpoint at its demo workdir

Frozen backbone in inference mode, SGD momentum 0.9, no weight decay, per-epoch cosine.
"""

from cast_jax.train.config_lib import finalize, lincls_defaults


def get_config(arg=None):
  c = lincls_defaults()
  c.model.update(kind='cast', variant='small', image_size=64, embed_dim=96, depth=(2, 2, 2, 1), num_heads=4,
                 num_clusters=(16, 8, 4, 2), max_segments=64, num_classes=8)
  c.data.update(name='partworld', train_split='train', eval_split='validation', image_size=64,
                source_image_size=96, crop_scale=(0.25, 1.0), eval_resize_ratio=1.0, num_train_examples=4096,
                num_eval_examples=512, num_workers=0, read_threads=2, superpixels='moco',
                superpixel_overrides={'num_segments': 49, 'iterations': 10})
  c.batch_size = 128
  c.num_epochs = 10
  c.base_lr = 0.8
  c.log_every_steps = 32
  c.checkpoint_every_steps = 160
  c.eval_every_steps = 160
  c.knn.update(num_test=512, batch_size=128, num_classes=8)
  return finalize(c, arg)
