r"""How much a MoCo network's outputs already pair the two training views of each example.

    python -m cast_jax.evaluate.view_agreement --config=configs/demo.py [--set data.keep_object_colours=True]
    python -m cast_jax.evaluate.view_agreement --config=configs/demo.py --checkpoint=/tmp/cast_demo

One batch of the config's own training views (its MoCo recipe, superpixels and seed) goes through the network in
training mode (batch-statistic BatchNorm and dropout, each view with its own dropout draws, as the train step
sees it): the untrained network of ``config.seed``
(as the trainer initialises it), or a run folder's base encoder with ``--checkpoint``. For the encoder's
'features' and the projector's 'projection' of both views, and for 'query_key' (the predictor's output for view
1 against the projection of view 2: the pair the loss compares, with the base encoder standing in for the
momentum encoder it equals at initialisation), it prints, over the batch:

  pos: mean cosine of view 1 of example i with view 2 of example i;
  neg: mean cosine of view 1 of example i with view 2 of the others;
  top1: how often view 2 of example i is the nearest view 2 to view 1 of example i (chance 1 / batch).

pos - neg is the signal a contrastive step starts from. At initialisation the predictor is a random map, so
'query_key' pairs almost nothing, while 'projection' shows what the views already share for the untrained
encoder (README, "What the demo's start needs").
"""

from __future__ import annotations

import argparse
import ast
import json

import numpy as np

OUTPUTS = ('features', 'projection', 'prediction')
PAIRS = {'features': ('features', 'features'), 'projection': ('projection', 'projection'),
         'query_key': ('prediction', 'projection')}


def pairing_scores(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
  """first, second: (B, D), row i of both from example i -> {'pos', 'neg', 'top1'} (cosines; top1 a fraction)."""
  if first.shape != second.shape or first.ndim != 2 or first.shape[0] < 2:
    raise ValueError(f'need two (B, D) arrays with B >= 2; got {first.shape} and {second.shape}')
  a = first / np.linalg.norm(first, axis=1, keepdims=True)
  b = second / np.linalg.norm(second, axis=1, keepdims=True)
  cos = a @ b.T
  size = len(cos)
  diagonal = np.trace(cos)
  return {'pos': float(diagonal / size), 'neg': float((cos.sum() - diagonal) / (size * (size - 1))),
          'top1': float((cos.argmax(axis=1) == np.arange(size)).mean())}


def _apply_overrides(config, assignments) -> None:
  """``key.sub=value`` strings (values as Python literals, else plain strings) onto the config."""
  for assignment in assignments or ():
    key, sep, text = assignment.partition('=')
    if not sep:
      raise ValueError(f'--set takes key=value; got {assignment!r}')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split('.')
    node = config
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise ValueError(f'--set {key}: the config has no field {key}')
    node[leaf] = value


def view_agreement(config, variables=None, batch_size: int = 128) -> dict[str, dict[str, float]]:
  """{name: pairing_scores} for each of ``PAIRS`` on one training batch of ``config``; ``variables`` default to
  the trainer's initialisation at ``config.seed``."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from cast_jax.models import build_model  # pylint: disable=import-outside-toplevel
  from cast_jax.train import inputs, loop  # pylint: disable=import-outside-toplevel
  from cast_jax import xla_cpu  # pylint: disable=import-outside-toplevel

  if config.trainer != 'moco':
    raise ValueError(f'view_agreement needs a moco config (two views per example); got trainer {config.trainer!r}')
  spec = loop.model_spec(config)
  model = build_model(spec)
  if variables is None:
    variables = loop.initial_variables(config, spec, model)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  batch = next(inputs.moco_train_iterator(config.data, batch_size, config.seed, 0, 1, spec.uses_superpixels))

  @xla_cpu.jit
  def forward(images, superpixels, rng):
    out, _ = model.apply(variables, images, superpixels, train=True, mutable=['batch_stats'],
                         rngs={'dropout': rng})
    return {name: out[name] for name in OUTPUTS}

  # Each view with its own dropout draws, as in the train step (query and key branches draw apart).
  first = forward(jnp.asarray(batch['view1']), jnp.asarray(batch['superpixels1']), jax.random.PRNGKey(1))
  second = forward(jnp.asarray(batch['view2']), jnp.asarray(batch['superpixels2']), jax.random.PRNGKey(2))
  return {name: pairing_scores(np.asarray(first[one]), np.asarray(second[other]))
          for name, (one, other) in PAIRS.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True, help='a moco config file (configs/demo.py, with :arg if any)')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='a config override, e.g. data.keep_object_colours=True (repeatable)')
  parser.add_argument('--checkpoint', default='', help='a MoCo run folder (default: the untrained network)')
  parser.add_argument('--batch', type=int, default=128)
  args = parser.parse_args(argv)

  from cast_jax import run_folder  # pylint: disable=import-outside-toplevel
  from cast_jax.train.config_lib import load_config_file  # pylint: disable=import-outside-toplevel

  config = load_config_file(args.config)
  _apply_overrides(config, args.set)
  variables = run_folder.load_variables(args.checkpoint)[1] if args.checkpoint else None
  scores = view_agreement(config, variables, args.batch)
  print(json.dumps({'config': args.config, 'set': args.set, 'checkpoint': args.checkpoint or 'untrained',
                    'seed': config.seed, 'batch': args.batch, **scores}))


if __name__ == '__main__':
  main()
