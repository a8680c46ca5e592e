"""PartWorld as a semantic-segmentation dataset: class-index label maps from its ground truth, no download.

``labels='objects'`` (the demo's): 9 classes, 0 background and ``1 + class id`` on the object's pixels
(``object_mask``), so a map says *what* is where. ``labels='parts'``: ``NUM_PARTS + 1`` = 29 classes, the
``part_mask`` ids as they are (0 background). Every pixel is labelled (PartWorld has no unknown pixels), so
no 255 appears here; the recipes add 255 only where they pad.
"""

from __future__ import annotations

import numpy as np

from cast_jax.data import partworld

LABELS = {'objects': partworld.NUM_CLASSES + 1, 'parts': partworld.NUM_PARTS + 1}


def num_classes(labels: str) -> int:
  """Classes of the label maps (background included)."""
  if labels not in LABELS:
    raise ValueError(f'unknown PartWorld segmentation labels {labels!r}; choose one of {sorted(LABELS)}')
  return LABELS[labels]


class PartWorldSegmentation:
  """``ds[i]``: {'image': (S, S, 3) uint8, 'label_map': (S, S) uint8 class ids, 'label': int object class}.

  Wraps ``partworld.PartWholeDataset`` (same arguments, same images); a grain RandomAccessDataSource.
  """

  def __init__(self, num_examples: int, image_size: int = 224, seed: int = 0, split: str = 'train',
               labels: str = 'objects', palette: str = 'random'):
    num_classes(labels)
    self.labels = labels
    # palette: PartWorld's part colours ('random' or 'class', see partworld.make_example); a model pretrained on
    # one rendering (the MoCo demo: 'class') is scored on the same.
    self._examples = partworld.PartWholeDataset(num_examples, image_size=image_size, seed=seed, split=split,
                                                palette=palette)

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index) -> dict:
    example = self._examples[index]
    if self.labels == 'objects':
      label_map = np.where(example['object_mask'], example['label'] + 1, 0)
    else:
      label_map = example['part_mask']
    return {'image': example['image'], 'label_map': label_map.astype(np.uint8), 'label': example['label']}

  def __repr__(self) -> str:
    return f'PartWorldSegmentation({self._examples!r}, labels={self.labels!r})'
