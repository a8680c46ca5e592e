"""PartWorld's segmentation source: class-index maps from its ground truth, and the segmentation trainer's start
rules (which checkpoints a Segmenter accepts)."""

from __future__ import annotations

import numpy as np
import pytest

from cast_jax.data import partworld
from cast_jax.data.partworld_segmentation import PartWorldSegmentation, num_classes
from cast_jax.loading import choose_rules
from cast_jax.models.variants import ModelSpec
from cast_jax.train import tasks
from cast_jax.train.config_lib import load_config_file
from conftest import REPO_ROOT


@pytest.mark.parametrize('labels', ['objects', 'parts'])
def test_label_maps_are_the_ground_truth(labels):
  seg = PartWorldSegmentation(3, image_size=64, seed=1, split='validation', labels=labels)
  raw = partworld.PartWholeDataset(3, image_size=64, seed=1, split='validation')
  for i in range(3):
    ex, truth = seg[i], raw[i]
    np.testing.assert_array_equal(ex['image'], truth['image'])
    assert ex['label_map'].dtype == np.uint8 and ex['label_map'].shape == (64, 64)
    expected = (np.where(truth['object_mask'], truth['label'] + 1, 0) if labels == 'objects'
                else truth['part_mask'])
    np.testing.assert_array_equal(ex['label_map'], expected)
    assert ex['label_map'].max() < num_classes(labels)
  assert (num_classes('objects'), num_classes('parts')) == (9, 29)
  with pytest.raises(ValueError, match='unknown PartWorld segmentation labels'):
    PartWorldSegmentation(1, labels='instances')


def test_segmenter_starts_from_itself_or_a_deit_checkpoint_only():
  config = load_config_file(f'{REPO_ROOT / "configs" / "seg_demo.py"}:test')
  spec = ModelSpec.from_config(config.model.to_dict())
  rules, required = tasks.start_rules(config, spec)
  assert not required and [r.kinds for r in rules] == [('cast_seg_deit',), ('cast_deit',)]
  assert choose_rules(rules, spec.replace(seg_classes=0, kind='cast_deit')).kinds == ('cast_deit',)
  with pytest.raises(ValueError, match='holds a cast model; this model starts from'):
    choose_rules(rules, ModelSpec(kind='cast', moco=True))
