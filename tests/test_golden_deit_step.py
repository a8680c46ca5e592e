"""One DeiT optimizer step from the golden cast_deit checkpoint, against the original's train_step.npz.

Train mode with Dropout p=0 and drop path 0, label-smoothed (0.1) cross-entropy on ``labels``, AdamW with
weight decay 0.05 except 1-D parameters, biases, pos_embed and cls_token; the frozen last pooling layer never
changes. Compared at the golden README's tolerances: loss, every gradient, every parameter and BatchNorm
statistic after the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import build_model
from cast_jax.train import optim
from cast_jax.train.supervised import SupervisedObjective
from conftest import (checkpoint_path, fast_jit, golden_folder_params, golden_state_as_flax, load_meta,
                      require_golden, spec_from_meta)

# Selected by meta.json kind; batch size, depth and width all come from the fixture's arrays and meta.json.
FOLDERS = golden_folder_params('deit', needs=('train_step.npz',))


@pytest.mark.parametrize('folder', FOLDERS)
def test_deit_train_step_matches_original(folder):
  root = require_golden(folder)
  meta = load_meta(folder)
  spec = spec_from_meta(meta).replace(pool_dropout=0.0, drop_path_rate=0.0)
  variables = convert.convert_checkpoint(checkpoint_path(folder), spec=spec).variables
  golden = np.load(root / folder / 'train_step.npz')
  inputs = np.load(root / folder / 'inputs.npz')
  batch = {'image': jnp.asarray(inputs['image'].transpose(0, 2, 3, 1)),
           'superpixels': jnp.asarray(inputs['superpixels']), 'label': jnp.asarray(golden['labels'])}
  lr = float(golden['lr'])
  labels = optim.trainable_labels(spec, variables['params'])
  objective = SupervisedObjective(model=build_model(spec), num_classes=meta['num_classes'], label_smoothing=0.1,
                                  optimizer=optim.adamw(lr, labels, weight_decay=0.05,
                                                        decay_mask=optim.decay_matrices))
  state = objective.init_state(variables, jax.random.PRNGKey(0))

  def step(state, batch):
    grads, aux = objective.gradients(state, batch)
    return objective.apply_gradients(state, grads, aux)[0], grads, aux['loss']

  new_state, grads, loss = fast_jit(step)(state, batch)
  expected_loss = float(golden['loss'])
  assert abs(float(loss) - expected_loss) <= 1e-5 * expected_loss, (float(loss), expected_loss)

  expected_grads = golden_state_as_flax(golden, spec, 'grad/', require_all=False)['params']
  ours = {p: np.asarray(g) for p, g in convert.flatten(grads).items()}
  frozen = {p for p, l in convert.flatten(labels).items() if l == optim.FROZEN}
  last_pool = f'pool{len(meta["num_clusters"])}'  # the original never uses its last pooling layer's output
  assert frozen and all(p[0] == last_pool for p in frozen), sorted({p[0] for p in frozen})
  assert set(expected_grads) == set(ours) - frozen
  # Gradients that are exactly zero in exact arithmetic (the attention output bias of centroid_fc, which the
  # mean-centring removes) are float32 noise in the original; a millionth of the largest gradient bounds it.
  floor = 1e-6 * max(float(np.abs(g).max()) for g in expected_grads.values())
  for path, g in expected_grads.items():
    tol = 1e-4 * float(np.abs(g).max()) + floor
    err = float(np.abs(ours[path] - g).max())
    assert err <= tol, f'grad {"/".join(path)}: {err:.3g} > {tol:.3g}'

  after = golden_state_as_flax(golden, spec, 'after/', require_all=True)
  got = {'params': convert.flatten(new_state.params), 'batch_stats': convert.flatten(new_state.batch_stats)}
  before = convert.flatten(variables['params'])
  for collection, expected in after.items():
    assert set(expected) == set(got[collection]), collection
    for path, value in expected.items():
      actual = np.asarray(got[collection][path])
      label = f'{collection}/{"/".join(path)}'
      if collection == 'params' and path in frozen:
        np.testing.assert_array_equal(actual, before[path], err_msg=label)
        np.testing.assert_array_equal(value, before[path], err_msg=label)
      elif collection == 'params':
        g = expected_grads[path]
        err = np.abs(actual - value)
        assert float(np.max(np.where(np.abs(g) > 1e-6, err, 0))) <= 1e-5, f'{label}: {float(err.max()):.3g}'
        assert float(err.max()) <= 2 * lr + 1e-6, label
      else:
        scale = max(1.0, float(np.abs(value).max()))
        assert float(np.abs(actual - value).max()) / scale <= 1e-4, label
