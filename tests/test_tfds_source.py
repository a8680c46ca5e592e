"""TFDS sources through tfds.data_source, with TFDS's own mock (no download, no TensorFlow).

TFDS's default mock generates decoded examples and needs TensorFlow to encode them, so the data source here is
TFDS's own ``BaseDataSource`` over records serialized by the dataset's own features: reading a record runs
TFDS's real deserialization and decoding, which is where a corrupt image used to stop a run.
"""

from __future__ import annotations

import dataclasses
import io

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.data_sources import base as tfds_base

from cast_jax.data.pipeline import PipelineConfig, ResilientDecode, make_dataset
from cast_jax.data.sources import TfdsSource

CORRUPT = b'\x89PNG\r\n\x1a\n but the rest is not a PNG'


@dataclasses.dataclass(repr=False)
class _InMemoryDataSource(tfds_base.BaseDataSource):
  """TFDS's data source (deserialization and decoders included) over serialized records held in memory."""

  records: tuple = ()

  def __post_init__(self):
    self.data_source = list(self.records)

  def __len__(self) -> int:
    return len(self.data_source)


def _png(rng, height, width) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, 'PNG')
  return buffer.getvalue()


def _mock_tfds(num_examples: int, corrupt=(), unparsable=()):
  """``tfds.testing.mock_data`` whose data sources hold ``num_examples`` PNG records of varied sizes, labels
  i % 10; records in ``corrupt`` hold bytes no decoder reads, those in ``unparsable`` are not examples at all."""
  rng = np.random.default_rng(0)

  def as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
    del split, kwargs
    records = []
    for i in range(num_examples):
      image = CORRUPT if i in corrupt else _png(rng, 20 + i, 30 + 2 * i)
      record = builder.info.features.serialize_example({'image': image, 'label': i % 10})
      records.append(b'\x00garbage' if i in unparsable else record)
    kwargs = {} if deserialize_method is None else {'deserialize_method': deserialize_method}
    return _InMemoryDataSource(dataset_info=builder.info, decoders=decoders, records=tuple(records), **kwargs)

  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=as_data_source)


def _shape_and_label(example, rng):
  del rng
  return {'hw': np.array(example['image'].shape[:2], np.int32), 'label': np.int32(example['label']),
          'skipped': example['skipped']}


def test_mocked_tfds_split_flows_through_the_pipeline():
  with _mock_tfds(12):
    source = TfdsSource('imagenette', 'train')
    assert len(source) == 12
    batch = next(iter(make_dataset(source, _shape_and_label, PipelineConfig(batch_size=4, seed=0))))
  assert batch['hw'].shape == (4, 2) and (batch['hw'] > 0).all()
  assert batch['label'].dtype == np.int32 and ((0 <= batch['label']) & (batch['label'] < 10)).all()


def test_corrupt_records_are_skipped_and_counted_like_bad_files():
  """A record whose image no decoder reads, and one that is not an example, are skipped and counted."""
  with _mock_tfds(8, corrupt={2}, unparsable={5}):
    source = TfdsSource('imagenette', 'train')
    assert source[2]['image'] == CORRUPT and source[2]['label'] == 2  # undecoded: TFDS cannot fail on it
    assert source[5]['image'] == b''
    decoded = ResilientDecode(grain.MapDataset.source(source))
    elements = [decoded[i] for i in range(8)]
    epoch = list(make_dataset(source, _shape_and_label,
                              PipelineConfig(batch_size=8, shuffle=False, num_epochs=1, drop_remainder=False)))
  # Element i is record i, except that a bad record is replaced by the next good one (skipped = 1).
  assert [int(e['skipped']) for e in elements] == [0, 0, 1, 0, 0, 1, 0, 0]
  assert [int(e['label']) for e in elements] == [0, 1, 3, 3, 4, 6, 6, 7]
  assert elements[0]['image'].shape == (20, 30, 3) and elements[2]['image'].shape == (23, 36, 3)
  assert len(epoch) == 1 and int(epoch[0]['skipped'].sum()) == 2


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(ValueError, match='tfds build imagenette --file_format=array_record'):
    TfdsSource('imagenette', 'train', data_dir=str(tmp_path))
  assert not any(tmp_path.rglob('*.array_record*')), 'nothing may be downloaded or prepared'
