"""Evaluates a checkpoint without training: any of the config's evaluators (config.evals), by name.

    python -m cast_jax.evaluate --checkpoint=/tmp/cast_demo --config=configs/demo.py --evaluator=knn
    python -m cast_jax.evaluate --checkpoint=cast_small_in1k.npz --config=configs/moco_cast_s.py \
        --config.data.data_dir=~/tensorflow_datasets --evaluator=knn
    python -m cast_jax.evaluate --checkpoint=segmenter_ade20k.npz --config=configs/seg_cast_s_ade20k.py \
        --config.data.data_dir=~/tensorflow_datasets --evaluator=miou       # mIoU of a converted Segmenter

``--checkpoint`` is a converted PyTorch .npz (python -m cast_jax.convert) or a cast_jax workdir (its latest
checkpoint). The config supplies the data, the evaluators' settings and the model; the checkpoint's weights must
fit that model. ``--evaluator`` names entries of config.evals, comma-separated ('both' is knn,classifier); the
evaluators a training run skips (``every_steps=0``, e.g. the supervised configs' kNN) run here too. Prints one
JSON line with the numbers under the names training logs them (``knn/top1``, ``classifier/top1``,
``miou/miou``), and writes the hierarchy picture with --pictures=DIR.

``--model_from_checkpoint`` builds the model the checkpoint describes (a converted .npz's recorded spec, a
workdir's config.json) instead of ``config.model``, keeping the config's data and evaluators and its
``model.max_segments`` (the superpixel slots the data needs): e.g. a converted Segmenter of another width or
class count scored with a Segmenter config's data.
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
flags.DEFINE_bool('model_from_checkpoint', False, 'Build the model the checkpoint describes, not config.model '
                  '(the config still gives data, evaluators and model.max_segments).')
flags.mark_flags_as_required(['config', 'checkpoint'])
FLAGS = flags.FLAGS


def evaluator_names(evaluator: str) -> list[str]:
  """'knn,classifier' -> ['knn', 'classifier']; 'both' stands for knn,classifier."""
  names = [n.strip() for n in evaluator.split(',') if n.strip()]
  names = [m for n in names for m in (('knn', 'classifier') if n == 'both' else (n,))]
  if not names:
    raise ValueError('--evaluator names no evaluator; give names of config.evals, e.g. --evaluator=knn')
  return list(dict.fromkeys(names))


def use_checkpoint_model(config, source_spec) -> None:
  """config.model := the fields of ``source_spec`` (the checkpoint's model), except a max_segments the config sets:
  the superpixel slots are the data's business (a converted .npz records the converter's default)."""
  fields = json.loads(source_spec.to_json())
  if config.model.get('max_segments'):
    fields.pop('max_segments')
  with config.unlocked():
    for key, value in fields.items():
      if key in config.model and config.model[key] is not None and value is not None:
        value = type(config.model[key])(value) if isinstance(config.model[key], (tuple, list)) else value
      config.model[key] = value


def evaluate_checkpoint(config, checkpoint: str, evaluator: str = 'knn', ema: bool = False, pictures: bool = False,
                        model_from_checkpoint: bool = False):
  """(scalars, images) of ``checkpoint`` on ``config``'s evaluation data, keys as training logs them;
  ``pictures`` adds the config's hierarchy_pictures evaluators; ``model_from_checkpoint`` builds the model the
  checkpoint describes (module docstring). ``config`` is changed in place (init_checkpoint, and the model)."""
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
  if model_from_checkpoint:
    use_checkpoint_model(config, source_spec)
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
                                       pictures=bool(FLAGS.pictures),
                                       model_from_checkpoint=FLAGS.model_from_checkpoint)
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
