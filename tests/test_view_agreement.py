"""``cast_jax.evaluate.view_agreement``: how much a MoCo network's outputs pair the two views of each example."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cast_jax.evaluate import view_agreement as va
from cast_jax.train.config_lib import load_config_file
from conftest import REPO_ROOT


def test_pairing_scores_on_known_vectors():
  eye = np.eye(4, 6)
  assert va.pairing_scores(eye, 2 * eye) == {'pos': pytest.approx(1.0), 'neg': pytest.approx(0.0), 'top1': 1.0}
  rolled = np.roll(eye, 1, axis=0)  # view 2 of example i is view 1 of example i - 1
  scores = va.pairing_scores(eye, rolled)
  assert scores['pos'] == pytest.approx(0.0) and scores['neg'] == pytest.approx(1 / 3) and scores['top1'] == 0.0
  with pytest.raises(ValueError, match='two .B, D. arrays'):
    va.pairing_scores(eye, eye[:3])


def test_identical_views_pair_perfectly_and_the_demo_views_do_not(capsys):
  """Two views made identical (one rendering, one crop, no appearance changes) give cosine 1 for the features
  and projections of the untrained :test network without dropout (jitted forward); with the model's dropout each
  view draws its own masks, as in the train step, so they no longer match; the demo's own views do not either."""
  config = load_config_file(REPO_ROOT / 'configs' / 'demo.py:test')
  same = ['data.second_rendering=False', 'data.shared_geometry=True', 'data.jitter_prob=0.0',
          'data.grayscale_prob=0.0', 'data.blur_probs=(0.0, 0.0)', 'data.solarize_probs=(0.0, 0.0)']
  va._apply_overrides(config, same)  # pylint: disable=protected-access
  with_dropout = va.view_agreement(config, batch_size=8)
  va._apply_overrides(config, ['model.pool_dropout=0.0', 'model.fusion_dropout=0.0'])  # pylint: disable=protected-access
  scores = va.view_agreement(config, batch_size=8)
  for name in ('features', 'projection'):
    assert scores[name]['pos'] == pytest.approx(1.0, abs=1e-5) and scores[name]['top1'] == 1.0
  assert with_dropout['projection']['pos'] < 0.999  # independent dropout draws per view
  assert abs(scores['query_key']['pos']) < 0.9  # a random predictor maps a projection elsewhere

  va.main(['--config', str(REPO_ROOT / 'configs' / 'demo.py:test'), '--batch', '8'])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed['checkpoint'] == 'untrained' and set(va.PAIRS) <= set(printed)
  assert printed['features']['pos'] < 0.999  # two renderings, two crops: not the same image
  with pytest.raises(ValueError, match='has no field data.no_such'):
    va._apply_overrides(config, ['data.no_such=1'])  # pylint: disable=protected-access
