r"""Linear probe of the demo's MoCo-pretrained CAST on PartWorld (8 classes), on one CPU.

    python -m cast_jax.main --config=configs/lincls_demo.py --workdir=/tmp/cast_demo_lincls \
        --config.init_checkpoint=/tmp/cast_demo
    # the ViT baseline: add --config.model.kind=vit_conv and point init_checkpoint at its demo workdir

Frozen backbone in inference mode, SGD momentum 0.9, no weight decay, per-epoch cosine.
"""

from cast_jax.train.config_lib import finalize, lincls_defaults, use_demo_model_and_data


def get_config(arg=None):
  c = use_demo_model_and_data(lincls_defaults())
  c.model.kind = 'cast'
  c.data.palette = 'class'  # the images configs/demo.py trained on
  c.batch_size = 128
  c.num_epochs = 10
  c.base_lr = 0.8
  c.log_every_steps = 32
  c.checkpoint_every_steps = 160
  c.eval_every_steps = 160
  return finalize(c, arg)
