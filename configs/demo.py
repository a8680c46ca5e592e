r"""The demo: MoCo-v3 pretraining of a small CAST on the built-in PartWorld dataset, on one CPU.

    python -m cast_jax.main --config=configs/demo.py --workdir=/tmp/cast_demo
    # the ViT baseline with the same budget:
    python -m cast_jax.main --config=configs/demo.py --workdir=/tmp/vit_demo --config.model.kind=vit_conv

No download: PartWorld (cast_jax.data.partworld) is generated on the fly, 8 object classes with 28 parts.
Finishes in about 15 minutes on a 2-core CPU, then prints kNN top-1 on held-out images (chance: 12.5%)
and writes pictures of the learned hierarchy to /tmp/cast_demo/pictures.
"""

from cast_jax.train.config_lib import finalize, moco_defaults


def get_config(arg=None):
  c = moco_defaults()
  c.model.update(kind='cast', variant='small', image_size=64, embed_dim=96, depth=(2, 2, 2, 1), num_heads=4,
                 num_clusters=(16, 8, 4, 2), max_segments=64, moco_dim=64, moco_mlp_dim=512)
  c.data.update(name='partworld', train_split='train', eval_split='validation', image_size=64,
                source_image_size=96, crop_scale=(0.25, 1.0), eval_resize_ratio=1.0,
                num_train_examples=4096, num_eval_examples=512, num_workers=0, read_threads=2,
                superpixels='moco', superpixel_overrides={'num_segments': 49, 'iterations': 10})
  c.batch_size = 64
  c.num_epochs = 8
  c.warmup_epochs = 1
  c.base_lr = 2e-3  # x 64/256; a short schedule wants a larger rate than the original's 1.5e-4
  c.weight_decay = 0.05
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.eval_every_steps = 256  # half-way and at the end
  c.knn.update(train_split='train', num_train=2048, num_test=512, batch_size=128, num_classes=8)
  c.pictures.num_images = 4
  return finalize(c, arg)
