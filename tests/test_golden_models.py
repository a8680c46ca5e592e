"""Parity with the original PyTorch CAST: every golden folder, converted checkpoint, jitted forward.

Each model is built from the folder's meta.json alone, its checkpoint goes through the command-line
converter, and every array of outputs.npz is compared with the golden README's tolerances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import build_model, pixel_hierarchy
from cast_jax.models.segments import downsample_nearest
from conftest import (assert_close_golden, checkpoint_path, golden_folder_params, load_meta, require_golden,
                      spec_from_meta)

# Every folder whose meta.json kind this port builds (MODEL_KINDS), whatever it is called or wherever it sits.
FOLDERS = golden_folder_params()


def model_outputs(spec, variables, images, superpixels, stride: int):
  """Everything outputs.npz can hold, named as there, from one jitted forward pass. stride: the conv stem's."""
  model = build_model(spec)

  @jax.jit
  def forward(variables, images, superpixels):
    out = dict(model.apply(variables, images, superpixels))
    inter = out.pop('intermediates')
    named = {k: v for k, v in out.items()}
    named.update({f'inter_{k}': v for k, v in inter.items()})
    named['hierarchy'] = pixel_hierarchy(inter, superpixels)
    if spec.kind in ('cast', 'cast_deit', 'cast_seg_pretrain'):
      # The map the model samples: every stride-th pixel, at the conv stem's stride.
      named['hierarchy_lowres'] = pixel_hierarchy(inter, downsample_nearest(superpixels, stride))
    if 'tokens' in named:
      named['output'] = named['tokens']  # cast_seg_deit saves its fused tokens under both names
    return named

  return forward(variables, images, superpixels)


@pytest.mark.parametrize('folder', FOLDERS)
def test_golden_forward_matches_original(folder, tmp_path):
  root = require_golden(folder)
  meta = load_meta(folder)
  spec = spec_from_meta(meta)

  # The command-line converter, with only what the weights cannot tell passed explicitly.
  dst = tmp_path / 'converted.npz'
  argv = [str(checkpoint_path(folder)), str(dst), '--num-clusters', ','.join(map(str, meta['num_clusters'])),
          '--max-segments', str(meta['num_superpixels']), '--num-heads', str(meta['num_heads'])]
  assert convert.main(argv) == 0
  detected, variables = convert.load_converted(dst)
  for field in ('kind', 'embed_dim', 'depth', 'image_size', 'num_classes', 'moco', 'moco_dim', 'moco_mlp_dim',
                'num_clusters', 'max_segments'):
    assert getattr(detected, field) == getattr(spec, field), f'converter detected {field}={getattr(detected, field)}'

  inputs = np.load(root / folder / 'inputs.npz')
  expected = np.load(root / folder / 'outputs.npz')
  images = jnp.asarray(inputs['image'].transpose(0, 2, 3, 1))  # the original takes NCHW
  superpixels = jnp.asarray(inputs['superpixels'])
  outputs = model_outputs(spec, {'params': variables['params'], 'batch_stats': variables['batch_stats']},
                          images, superpixels, stride=meta['patch_size'])
  missing = sorted(set(expected.files) - set(outputs))
  assert not missing, f'the port produces no counterpart for {missing}'
  errors = {name: assert_close_golden(name, outputs[name], expected[name]) for name in expected.files}
  worst = max(errors, key=errors.get)
  print(f'{folder}: largest scaled float difference {errors[worst]:.2g} ({worst})')  # the README quotes this

