"""``python -m cast_jax.benchmark --only superpixels``: SEEDS, SLIC and jax_slic side by side (tiny sizes)."""

from __future__ import annotations

import json

import jax

from cast_jax import benchmark


def test_superpixels_section_reports_three_methods(capsys):
  assert benchmark.main(['--only', 'superpixels', '--image-size', '64', '--superpixel-batch', '4',
                         '--repeats', '1']) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [row['method'] for row in rows] == ['seeds', 'slic', 'jax_slic']
  assert all(row['images_per_s'] > 0 and row['image_size'] == 64 for row in rows)
  assert rows[2]['batch'] == 4 and rows[2]['compile_s'] > 0 and rows[2]['backend'] == jax.default_backend()
