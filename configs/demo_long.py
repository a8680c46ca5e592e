r"""The MoCo demo on a longer schedule, CAST beside the ViT baseline at equal CPU time (about 25 minutes each on an idle 2-core CPU).

    python -m cast_jax.main --config=configs/demo_long.py --workdir=/tmp/cast_demo_long
    # the ViT at equal CPU time: a ViT step costs about 1/2.3 of a CAST step here, so it gets 56 epochs (3584 steps)
    python -m cast_jax.main --config=configs/demo_long.py --workdir=/tmp/vit_demo_long \
        --config.model.kind=vit_conv --config.num_epochs=56
    python -m cast_jax.plot_curves --run cast=/tmp/cast_demo_long --run vit=/tmp/vit_demo_long \
        --metric knn/top1 --reference 12.5 --out demo_long_knn.png

``configs/demo.py`` (same model, data, views and optimiser) for 24 epochs instead of 8: 1536 steps of 64, kNN
every 256 steps. Measured in README "Results on the built-in dataset" ("The longer schedule").
"""

import pathlib

from cast_jax.train.config_lib import finalize, load_config_file


def get_config(arg=None):
  c = load_config_file(pathlib.Path(__file__).with_name('demo.py'))
  c.num_epochs = 24
  c.warmup_epochs = 2
  c.eval_every_steps = 256
  c.checkpoint_every_steps = 512
  return finalize(c, arg)
