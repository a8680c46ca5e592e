"""The Segmenter configs: the original's recipe in the full configs (segm/config.yml, train_cast.py), their
``:test`` shrink, and a clear stop when ADE20K / Pascal Context are not prepared (tests/test_configs.py checks
that every config loads and builds its model)."""

from __future__ import annotations

import math

import pytest

from cast_jax.models.variants import ModelSpec
from cast_jax.train import inputs
from cast_jax.train.config_lib import load_config_file
from cast_jax.train.schedules import Schedule
from conftest import REPO_ROOT


def config(name, arg=''):
  return load_config_file(f'{REPO_ROOT / "configs" / name}.py{arg}')


@pytest.mark.parametrize('name,classes,batch,epochs,crop,stride,train_size', [
    ('seg_cast_s_ade20k', 150, 8, 64, 512, 480, 20210),
    ('seg_cast_s_pcontext', 60, 16, 256, 480, 448, 4998)])
def test_full_configs_follow_the_original(name, classes, batch, epochs, crop, stride, train_size):
  c = config(name)
  spec = ModelSpec.from_config(c.model.to_dict())
  assert (c.trainer, spec.kind, spec.seg_classes, spec.image_size) == ('segmentation', 'cast_seg_deit', classes, crop)
  assert spec.max_segments == crop * crop // 256 and spec.decoder_size()['n_heads'] == 384 // 64
  assert (c.base_lr, c.min_lr, c.lr_power, c.momentum, c.weight_decay) == (1e-3, 1e-5, 0.9, 0.9, 0.0)
  assert (c.batch_size, c.num_epochs, c.data.crop_size, c.data.window_stride) == (batch, epochs, crop, stride)
  # iter_max of the original (161,728 and 80,128): the short last batch counts.
  assert Schedule.from_config(c, train_size).total_steps == math.ceil(train_size / batch) * epochs
  assert c.evals.miou.type == 'miou'


@pytest.mark.parametrize('name', ['seg_cast_s_ade20k', 'seg_cast_s_pcontext', 'seg_demo'])
def test_test_shrink_trains_partworld_objects(name):
  c = config(name, ':test')
  assert c.data.name == 'partworld_segmentation' and c.model.seg_classes == 9
  assert len(inputs.make_source(c.data, 'train')) == 44 and c.partial_last_batch
  assert Schedule.from_config(c, 44).steps_per_epoch == 6  # ceil(44 / 8): the 6th batch has 4 padding rows


@pytest.mark.parametrize('name,dataset', [('seg_cast_s_ade20k', 'ade20k'), ('seg_cast_s_pcontext', 'pascal_context')])
def test_unprepared_dataset_names_what_to_prepare(name, dataset, tmp_path):
  c = config(name)
  c.data.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match=rf"'{dataset}' split 'train' is not prepared.*tfds build data/{dataset}"):
    inputs.make_source(c.data, 'train')
