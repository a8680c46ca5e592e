"""``type='hierarchy_pictures'``: the hierarchy of the first ``num_images`` images of the evaluation split.

One image, ``first_batch``: for each image a row of the image, its superpixels, then each level's segments
(``cast_jax.visualize.batch_panel``). Models without superpixels (the ViT baseline) draw nothing.
"""

from __future__ import annotations

import numpy as np

from cast_jax import visualize
from cast_jax.evaluators.base import Evaluator, evaluation_pass, register, to_uint8, variables_of


@register('hierarchy_pictures')
class HierarchyPicturesEvaluator(Evaluator):
  """Images: ``first_batch`` (uint8 (H, W, 3)); no scalars."""

  OPTIONS = {'num_images': 4}

  def run(self, target, step):
    del step
    if not self.context.uses_superpixels or self.options['num_images'] <= 0:
      return {}, {}
    variables = variables_of(target)
    # One batch of the evaluator's batch size (the same compiled forward as the other evaluators); every
    # process runs it, and process 0's rows are the split's first examples.
    for batch, out, _ in evaluation_pass(self.context, variables, self.split, self.num_examples,
                                         self.batch_size, gather=(), first_batch_only=True):
      if 'hierarchy' not in out:
        return {}, {}
      shards = sorted(out['hierarchy'].addressable_shards, key=lambda s: s.index[0].start or 0)
      local = np.concatenate([np.asarray(s.data) for s in shards])
      rows = int(np.sum(batch['mask']))
      if rows == 0:
        return {}, {}
      panel = visualize.batch_panel(to_uint8(batch['image'][:rows]), batch['superpixels'][:rows],
                                    local[:rows], max_images=self.options['num_images'])
      return {}, {'first_batch': panel}
    return {}, {}
