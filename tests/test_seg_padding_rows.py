"""The padding rows of a padded short batch (``partial_last_batch``) change nothing in a segmentation step: with
the batch's ``mask`` the loss, the gradients and the train-mode BatchNorm statistics of 3 real images padded
with a 4th are those of the 3 images alone, as the original's short batch has only its real images. Dropout is
off (its random draws depend on the batch's shape); the padding row has other pixels and more superpixels
(it would raise the batch's token count).
"""

from __future__ import annotations

import jax
import numpy as np

from cast_jax.models import ModelSpec, build_model
from cast_jax.train import segmentation
from conftest import fast_jit

SIZE = 32


def grid(cells_per_side: int) -> np.ndarray:
  cell = SIZE // cells_per_side
  idx = np.arange(SIZE) // cell
  return (idx[:, None] * cells_per_side + idx[None, :]).astype(np.int32)


def test_padding_rows_are_out_of_loss_gradients_and_batch_statistics():
  spec = ModelSpec(kind='cast_seg_deit', embed_dim=24, depth=(1, 1, 1, 1), num_heads=2, num_clusters=(6, 4, 2, 1),
                   image_size=SIZE, max_segments=16, seg_classes=3, decoder_dim=16, decoder_heads=1,
                   decoder_dropout=0.0, pool_dropout=0.0, fusion_dropout=0.0)
  model = build_model(spec)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((4, SIZE, SIZE, 3)).astype(np.float32)
  images[3] *= 5.0  # the padding row: other statistics, which would shift every BatchNorm
  superpixels = np.stack([grid(3)] * 3 + [grid(4)])  # real rows: 9 tokens; the padding row: 16
  labels = rng.integers(0, 3, (4, SIZE, SIZE)).astype(np.int32)
  labels[3] = 255  # as IgnorePaddingRows writes them
  variables = jax.jit(model.init)({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                                  images[:2], superpixels[:2])
  objective = segmentation.SegmentationObjective(model=model, optimizer=None, num_classes=3, label_key='label_map')
  grads_fn = fast_jit(jax.value_and_grad(objective.loss, has_aux=True))

  def step(batch):
    (loss, aux), grads = grads_fn(variables['params'], variables['batch_stats'], batch, jax.random.PRNGKey(2))
    return float(loss), jax.device_get(aux['batch_stats']), jax.device_get(grads)

  real = {'image': images[:3], 'superpixels': superpixels[:3], 'label_map': labels[:3]}
  padded = {'image': images, 'superpixels': superpixels, 'label_map': labels,
            'mask': np.array([True, True, True, False])}
  expected = step(real)
  got = step(padded)
  np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
  for name, tree in (('batch_stats', 1), ('gradients', 2)):
    flat_got = jax.tree_util.tree_leaves_with_path(got[tree])
    flat_expected = jax.tree_util.tree_leaves(expected[tree])
    for (path, value), want in zip(flat_got, flat_expected):
      # float32 sums over 3 or 4 rows in another order: equal up to rounding at the leaf's own scale
      np.testing.assert_allclose(value, want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max()) + 1e-7,
                                 err_msg=f'{name} {jax.tree_util.keystr(path)}')
  # Counting the padding row (mask all True: the same compiled step) moves the statistics, so the comparison
  # above can fail.
  unmasked = step(dict(padded, mask=np.ones(4, bool)))
  stem_mean = lambda stats: stats['encoder']['patch_embed']['proj_1']['mean']  # noqa: E731
  assert not np.allclose(stem_mean(unmasked[1]), stem_mean(expected[1]), rtol=1e-3)
