"""Evaluates a checkpoint without training: kNN and/or classifier top-1 on a config's data.

    python -m cast_jax.evaluate --checkpoint=/tmp/cast_demo --config=configs/demo.py --evaluator=knn
    python -m cast_jax.evaluate --checkpoint=cast_small_in1k.npz --config=configs/moco_cast_s.py \
        --config.data.data_dir=~/tensorflow_datasets --evaluator=knn

``--checkpoint`` is a converted PyTorch .npz (python -m cast_jax.convert) or a cast_jax workdir (its latest
checkpoint). The config supplies the data, the kNN settings and the model; the checkpoint's weights must fit
that model. Prints one JSON line with the numbers (and writes the hierarchy picture with --pictures=DIR).
"""

from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'A training config (configs/*.py[:test]) for data and model.')
flags.DEFINE_string('checkpoint', None, 'Converted .npz or a cast_jax workdir.')
flags.DEFINE_enum('evaluator', 'knn', ['knn', 'classifier', 'both'], 'What to measure.')
flags.DEFINE_bool('ema', False, 'Evaluate the weight EMA of a supervised workdir.')
flags.DEFINE_string('pictures', None, 'Folder for the hierarchy picture of the first evaluation batch.')
flags.mark_flags_as_required(['config', 'checkpoint'])
FLAGS = flags.FLAGS


def evaluate_checkpoint(config, checkpoint: str, evaluator: str = 'knn', ema: bool = False):
  """(scalars, images) of ``checkpoint`` on ``config``'s evaluation data."""
  import jax  # pylint: disable=import-outside-toplevel

  from cast_jax.models.variants import build_model  # pylint: disable=import-outside-toplevel
  from cast_jax.train import evaluation, init_from, loop, sharding  # pylint: disable=import-outside-toplevel

  source_spec, loaded = init_from.load_variables(checkpoint, use_ema=ema)
  spec = loop.model_spec(config)
  classifier = evaluator in ('classifier', 'both')
  if not classifier:  # features only: evaluate the encoder the checkpoint holds, without any head
    spec = spec.replace(moco=False, num_classes=0)
  if source_spec.kind != spec.kind:
    raise ValueError(f'{checkpoint} holds a {source_spec.kind} model but the config describes {spec.kind}; '
                     f'pass --config.model.kind={source_spec.kind} (and its size)')
  model = build_model(spec)
  with config.unlocked():
    config.init_checkpoint = ''
    config.knn.enabled = evaluator in ('knn', 'both')
  fresh = jax.device_get(loop.initial_variables(config, spec, model))
  variables, kept = init_from.adapt(loaded, source_spec, fresh)
  if classifier and any('head' in k for k in kept):
    raise ValueError(f'{checkpoint} has no classifier head for this model; use --evaluator=knn')
  mesh = sharding.make_mesh(config.mesh.fsdp)
  runner = evaluation.Evaluator(config, model, mesh, spec.uses_superpixels, classifier=classifier)
  return runner(variables)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity('warning')
  scalars, images = evaluate_checkpoint(FLAGS.config, FLAGS.checkpoint, FLAGS.evaluator, FLAGS.ema)
  if FLAGS.pictures and 'hierarchy' in images:
    from cast_jax.visualize import save_png  # pylint: disable=import-outside-toplevel

    save_png(images['hierarchy'], f'{FLAGS.pictures}/hierarchy.png')
  print(json.dumps({'checkpoint': FLAGS.checkpoint, 'evaluator': FLAGS.evaluator, **scalars}))


def run():
  """The ``cast-evaluate`` console command (pyproject.toml), the same as ``python -m cast_jax.evaluate``."""
  app.run(main)


if __name__ == '__main__':
  run()
