"""``python -m cast_jax.evaluate.compare_hierarchies``: one picture of several checkpoints' hierarchies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cast_jax import convert, visualize
from cast_jax.evaluate import compare_hierarchies
from cast_jax.models import ModelSpec, build_model

SPEC = ModelSpec(kind='cast', image_size=64, embed_dim=24, depth=(1, 1, 1, 1), num_heads=2,
                 num_clusters=(8, 4, 2, 2), max_segments=64)


def _tiny_checkpoint(path, seed):
  model = build_model(SPEC)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64), jnp.int32))
  variables = jax.tree_util.tree_map(np.asarray, dict(variables))
  convert.save_converted(convert.Conversion(SPEC, variables, [], {}), path)
  return str(path)


def test_the_picture_has_a_row_per_image_and_a_column_per_level(tmp_path, capsys):
  first, second = _tiny_checkpoint(tmp_path / 'a.npz', 0), _tiny_checkpoint(tmp_path / 'b.npz', 1)
  out = tmp_path / 'cmp.png'
  assert compare_hierarchies.main(['before=' + first, 'after=' + second, '--out', str(out), '--num-images', '2',
                                   '--scale', '2', '--num-segments', '36']) == 0
  assert 'wrote' in capsys.readouterr().out
  picture = np.asarray(Image.open(out))
  tile, columns, rows = 64 * 2, 2 + 2 * 4, 2
  assert picture.shape == (visualize.TITLE_HEIGHT + rows * tile + (rows - 1) * visualize.GAP,
                           columns * tile + (columns - 1) * visualize.GAP, 3)
  # Two differently initialised models segment the same image differently somewhere.
  left = picture[visualize.TITLE_HEIGHT:, 2 * (tile + visualize.GAP):6 * (tile + visualize.GAP)]
  right = picture[visualize.TITLE_HEIGHT:, 6 * (tile + visualize.GAP):]
  assert left.shape == right.shape[:1] + (left.shape[1],) + (3,) and not np.array_equal(left, right[:, :left.shape[1]])


def test_bad_arguments_say_what_is_expected(tmp_path):
  with pytest.raises(SystemExit):
    compare_hierarchies.main(['no_equals_sign', '--out', str(tmp_path / 'x.png')])
  with pytest.raises(ValueError, match='one row'):
    visualize.tile_grid([])
  with pytest.raises(ValueError, match='every row'):
    visualize.tile_grid([[np.zeros((4, 4, 3), np.uint8)], []])


def test_the_images_use_the_palette_the_runs_trained_on(tmp_path, monkeypatch):
  path = _tiny_checkpoint(tmp_path / 'a.npz', 0)
  kwargs = dict(num_images=1, scale=1, num_segments=36)
  image_tile = np.s_[visualize.TITLE_HEIGHT:visualize.TITLE_HEIGHT + 64, :64]
  # A converted .npz names no palette: 'random', as score_hierarchy reads it.
  default = compare_hierarchies.compare([('a', path)], **kwargs)
  assert np.array_equal(default, compare_hierarchies.compare([('a', path)], palette='random', **kwargs))
  # A run that trained on palette='class' gets its images in those colours, unasked.
  monkeypatch.setattr(compare_hierarchies, 'run_palette', lambda p: 'class')
  by_run = compare_hierarchies.compare([('a', path)], **kwargs)
  assert np.array_equal(by_run, compare_hierarchies.compare([('a', path)], palette='class', **kwargs))
  assert not np.array_equal(by_run[image_tile], default[image_tile])
  # Runs that trained on different palettes are not silently drawn in one of them.
  monkeypatch.setattr(compare_hierarchies, 'run_palette', lambda p: 'class' if p.endswith('b.npz') else 'random')
  second = _tiny_checkpoint(tmp_path / 'b.npz', 1)
  with pytest.raises(ValueError, match='different PartWorld palettes'):
    compare_hierarchies.compare([('a', path), ('b', second)], **kwargs)
  assert compare_hierarchies.compare([('a', path), ('b', second)], palette='class', **kwargs).ndim == 3
