"""TFDS sources through tfds.data_source, with TFDS's own mock (no download, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cast_jax.data.pipeline import PipelineConfig, make_dataset
from cast_jax.data.sources import TfdsSource


def _shape_and_label(example, rng):
  del rng
  return {'hw': np.array(example['image'].shape[:2], np.int32), 'label': np.int32(example['label'])}


def test_mocked_tfds_split_flows_through_the_pipeline():
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    source = TfdsSource('imagenette', 'train')
    assert len(source) == 12
    batch = next(iter(make_dataset(source, _shape_and_label, PipelineConfig(batch_size=4, seed=0))))
  assert batch['hw'].shape == (4, 2) and (batch['hw'] > 0).all()
  assert batch['label'].dtype == np.int32 and ((0 <= batch['label']) & (batch['label'] < 10)).all()


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(ValueError, match='tfds build imagenette --file_format=array_record'):
    TfdsSource('imagenette', 'train', data_dir=str(tmp_path))
  assert not any(tmp_path.rglob('*.array_record*')), 'nothing may be downloaded or prepared'
