"""Evaluates a checkpoint without training: any of the config's evaluators (config.evals), by name.

    python -m cast_jax.evaluate --checkpoint=/tmp/cast_demo --config=configs/demo.py --evaluator=knn
    python -m cast_jax.evaluate --checkpoint=cast_small_in1k.npz --config=configs/moco_cast_s.py \
        --config.data.data_dir=~/tensorflow_datasets --evaluator=knn

``--checkpoint`` is a converted PyTorch .npz (python -m cast_jax.convert) or a cast_jax workdir (its latest
checkpoint). The config supplies the data, the evaluators' settings and the model; the checkpoint's weights must
fit that model. ``--evaluator`` names entries of config.evals, comma-separated ('both' is knn,classifier); the
evaluators a training run skips (``every_steps=0``, e.g. the supervised configs' kNN) run here too. Prints one
JSON line with the numbers under the names training logs them (``knn/top1``, ``classifier/top1``), and writes
the hierarchy picture with --pictures=DIR.
"""

from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'A training config (configs/*.py[:test]) for data and model.')
flags.DEFINE_string('checkpoint', None, 'Converted .npz or a cast_jax workdir.')
flags.DEFINE_string('evaluator', 'knn', 'Names in config.evals, comma-separated (knn, classifier, ...); '
                    '"both" is knn,classifier.')
flags.DEFINE_bool('ema', False, 'Evaluate the weight EMA of a supervised workdir.')
flags.DEFINE_string('pictures', None, 'Folder for the hierarchy picture of the first evaluation batch.')
flags.mark_flags_as_required(['config', 'checkpoint'])
FLAGS = flags.FLAGS


def evaluator_names(evaluator: str) -> list[str]:
  """'knn,classifier' -> ['knn', 'classifier']; 'both' stands for knn,classifier."""
  names = [n.strip() for n in evaluator.split(',') if n.strip()]
  names = [m for n in names for m in (('knn', 'classifier') if n == 'both' else (n,))]
  if not names:
    raise ValueError('--evaluator names no evaluator; give names of config.evals, e.g. --evaluator=knn')
  return list(dict.fromkeys(names))


def evaluate_checkpoint(config, checkpoint: str, evaluator: str = 'knn', ema: bool = False, pictures: bool = False):
  """(scalars, images) of ``checkpoint`` on ``config``'s evaluation data, keys as training logs them;
  ``pictures`` adds the config's hierarchy_pictures evaluators."""
  import jax  # pylint: disable=import-outside-toplevel

  from cast_jax import evaluators  # pylint: disable=import-outside-toplevel
  from cast_jax.models.variants import build_model  # pylint: disable=import-outside-toplevel
  from cast_jax.run_folder import load_variables  # pylint: disable=import-outside-toplevel
  from cast_jax.train import init_from, loop, sharding  # pylint: disable=import-outside-toplevel

  names = evaluator_names(evaluator)
  available = list((config.get('evals') or {}).keys())
  missing = [n for n in names if n not in available]
  if missing:
    raise ValueError(f'--evaluator={evaluator}: {missing} not in config.evals of this config (it has {available})')
  if pictures:
    names += [n for n in available if config.evals[n].get('type', n) == 'hierarchy_pictures' and n not in names]
  types = {n: config.evals[n].get('type', n) for n in names}
  source_spec, loaded = load_variables(checkpoint, use_ema=ema)
  spec = loop.model_spec(config)
  classifier = 'classifier' in types.values()
  if not classifier:  # features only: evaluate the encoder the checkpoint holds, without any head
    spec = spec.replace(moco=False, num_classes=0)
  if source_spec.kind != spec.kind:
    raise ValueError(f'{checkpoint} holds a {source_spec.kind} model but the config describes {spec.kind}; '
                     f'pass --config.model.kind={source_spec.kind} (and its size)')
  model = build_model(spec)
  with config.unlocked():
    config.init_checkpoint = ''
  fresh = jax.device_get(loop.initial_variables(config, spec, model))
  variables, kept = init_from.adapt(loaded, source_spec, fresh)
  if classifier and any('head' in k for k in kept):
    raise ValueError(f'{checkpoint} has no classifier head for this model; use --evaluator=knn')
  mesh = sharding.make_mesh(config.mesh.fsdp)
  context = evaluators.EvalContext(config, model, mesh, spec.uses_superpixels, classifier=classifier)
  scalars, images = {}, {}
  for runner in evaluators.build(config, context, names):
    ev_scalars, ev_images = runner.run(variables, step=0)
    scalars.update(evaluators.with_prefix(runner, ev_scalars))
    images.update(evaluators.with_prefix(runner, ev_images))
  return scalars, images


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity('warning')
  scalars, images = evaluate_checkpoint(FLAGS.config, FLAGS.checkpoint, FLAGS.evaluator, FLAGS.ema,
                                       pictures=bool(FLAGS.pictures))
  if FLAGS.pictures and images:
    from cast_jax.visualize import save_png  # pylint: disable=import-outside-toplevel

    for tag, image in images.items():  # e.g. hierarchy/first_batch -> DIR/hierarchy_first_batch.png
      save_png(image, f"{FLAGS.pictures}/{tag.replace('/', '_')}.png")
  print(json.dumps({'checkpoint': FLAGS.checkpoint, 'evaluator': FLAGS.evaluator, **scalars}))


def run():
  """The ``cast-evaluate`` console command (pyproject.toml), the same as ``python -m cast_jax.evaluate``."""
  app.run(main)


if __name__ == '__main__':
  run()
