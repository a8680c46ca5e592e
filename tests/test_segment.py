"""``python -m cast_jax.segment`` and the ``HierarchySegmenter`` behind it, on a converted golden checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from cast_jax import convert, segment, visualize
from conftest import checkpoint_path, golden_dir, golden_folder, load_meta, require_golden, spec_from_meta


@pytest.fixture(scope='module')
def moco_folder():
  """A golden MoCo pretraining fixture of plain CAST (selected by meta.json, whatever its folder is called)."""
  require_golden()
  return golden_folder('moco', seg_arch=False)


@pytest.fixture(scope='module')
def converted(tmp_path_factory, moco_folder):
  conversion = convert.convert_checkpoint(checkpoint_path(moco_folder), spec=spec_from_meta(load_meta(moco_folder)))
  path = tmp_path_factory.mktemp('ckpt') / 'converted.npz'
  convert.save_converted(conversion, path)
  return path


def test_segmenter_reproduces_the_originals_hierarchy(converted, moco_folder):
  """On the golden images (no resize), SEEDS + the model give the original's hierarchy exactly."""
  inputs = np.load(golden_dir() / moco_folder / 'inputs.npz')
  expected = np.load(golden_dir() / moco_folder / 'outputs.npz')['hierarchy']
  segmenter = segment.HierarchySegmenter.from_checkpoint(converted)
  results = segmenter(list(inputs['image_uint8']))
  for result, superpixels, hierarchy in zip(results, inputs['superpixels'], expected):
    np.testing.assert_array_equal(result['superpixels'], superpixels)
    np.testing.assert_array_equal(result['hierarchy'], hierarchy)


def test_command_on_sample_images(converted, moco_folder, tmp_path, capsys):
  images = {'astronaut': skimage.data.astronaut(), 'chelsea': skimage.data.chelsea(), 'coffee': skimage.data.coffee()}
  folder = tmp_path / 'in'
  folder.mkdir()
  for name, image in images.items():
    Image.fromarray(image).save(folder / f'{name}.png')
  (folder / 'broken.jpg').write_bytes(b'not an image')
  out = tmp_path / 'out'
  code = segment.main([str(folder), '--checkpoint', str(converted), '--out', str(out), '--batch', '2'])
  assert code == 1  # the broken file is reported, the others are written
  assert 'skipped unreadable image' in capsys.readouterr().err
  for name, image in images.items():
    arrays = np.load(out / f'{name}.npz')
    height, width = image.shape[:2]
    assert arrays['superpixels'].shape == (height, width)
    clusters = load_meta(moco_folder)['num_clusters']
    assert arrays['hierarchy'].shape == (len(clusters), height, width)
    # Coarser levels have fewer segments, at most each level's clusters.
    counts = [len(np.unique(level)) for level in arrays['hierarchy']]
    assert all(c <= k for c, k in zip(counts, clusters)) and counts == sorted(counts, reverse=True)
    levels = range(1, len(clusters) + 1)
    for suffix in ['superpixels', 'panel'] + [f'level{l}' for l in levels] + [f'level{l}_ids' for l in levels]:
      picture = np.asarray(Image.open(out / f'{name}_{suffix}.png'))
      assert picture.dtype == np.uint8 and picture.ndim == 3


def _save(folder, images):
  folder.mkdir(exist_ok=True)
  for name, image in images.items():
    Image.fromarray(image).save(folder / f'{name}.png')


def test_an_image_gives_the_same_hierarchy_alone_or_in_a_folder(converted, tmp_path):
  """The original counts tokens as the largest superpixel id over the batch + 1; the command must not let an
  image's neighbours change its hierarchy. SLIC gives these images different counts, so batching shows."""
  images = {'astronaut': skimage.data.astronaut(), 'moon': np.stack([skimage.data.moon()] * 3, -1),
            'coffee': skimage.data.coffee()}
  _save(tmp_path / 'folder', images)
  _save(tmp_path / 'alone', {'astronaut': images['astronaut']})
  for name in ('folder', 'alone'):
    argv = [str(tmp_path / name), '--checkpoint', str(converted), '--out', str(tmp_path / f'out_{name}'),
            '--superpixels', 'slic']
    assert segment.main(argv) == 0
  in_folder = {name: np.load(tmp_path / 'out_folder' / f'{name}.npz') for name in images}
  alone = np.load(tmp_path / 'out_alone' / 'astronaut.npz')
  counts = {name: int(arrays['superpixels'].max()) + 1 for name, arrays in in_folder.items()}
  assert counts['astronaut'] < max(counts.values()), f'the test needs differing superpixel counts: {counts}'
  np.testing.assert_array_equal(alone['superpixels'], in_folder['astronaut']['superpixels'])
  np.testing.assert_array_equal(alone['hierarchy'], in_folder['astronaut']['hierarchy'])


def test_failed_files_are_counted_and_set_the_exit_status(converted, tmp_path, capsys):
  rng = np.random.default_rng(0)
  _save(tmp_path / 'in', {f'img{i}': rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(5)})
  (tmp_path / 'in' / 'broken.jpg').write_bytes(b'not an image')
  (tmp_path / 'in' / 'truncated.png').write_bytes((tmp_path / 'in' / 'img0.png').read_bytes()[:60])
  code = segment.main([str(tmp_path / 'in'), '--checkpoint', str(converted), '--out', str(tmp_path / 'out')])
  captured = capsys.readouterr()
  assert code == 1, 'a run with failures must not exit 0'
  assert '5/7 images segmented' in captured.out and '2 failed' in captured.out, captured.out
  assert 'broken.jpg' in captured.err and 'truncated.png' in captured.err
  assert sorted(p.name for p in (tmp_path / 'out').glob('*.npz')) == [f'img{i}.npz' for i in range(5)]


def test_clear_errors(tmp_path, capsys):
  with pytest.raises(SystemExit):
    segment.main([str(tmp_path), '--checkpoint', 'unused.npz', '--out', str(tmp_path / 'out'), '--batch', '0'])
  assert '--batch must be at least 1 (got 0)' in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match='no such file'):
    segment.find_images([str(tmp_path / 'missing.png')])
  from cast_jax.models import ModelSpec

  with pytest.raises(ValueError, match='not CAST'):
    segment.HierarchySegmenter(ModelSpec(kind='vit_conv'), {'params': {}})
  with pytest.raises(ValueError, match='uint8'):
    visualize.check_image(np.zeros((4, 4, 3), np.float32), 'images')


def test_a_workdir_segments_with_the_superpixels_it_trained_with(converted, tmp_path, monkeypatch):
  """A run's config.json decides the superpixels (a 64 px demo model cannot hold the 196 of the default)."""
  import json  # pylint: disable=import-outside-toplevel

  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps(
      {'data': {'superpixels': 'slic', 'superpixel_overrides': {'num_segments': 50, 'compactness': 20.0}}}))
  monkeypatch.setattr(segment, 'load_variables', lambda path: convert.load_converted(converted))
  segmenter = segment.HierarchySegmenter.from_checkpoint(workdir)
  assert (segmenter.superpixel_config.method, segmenter.superpixel_config.num_segments) == ('slic', 50)
  assert segmenter.superpixel_config.compactness == 20.0
  # An explicit choice wins over the run's.
  assert segment.HierarchySegmenter.from_checkpoint(workdir, superpixels='moco').superpixel_config.method == 'seeds'
  from cast_jax.superpixels import preset  # pylint: disable=import-outside-toplevel

  default = segment.HierarchySegmenter.from_checkpoint(converted).superpixel_config  # an .npz: the 'moco' preset
  assert (default.method, default.num_segments) == ('seeds', preset('moco').num_segments)


def test_phone_photos_are_turned_upright(converted, moco_folder, tmp_path):
  """A JPEG whose EXIF says "rotate 90" is segmented upright; training data keeps the original's raw pixels."""
  from cast_jax.data.decode import decode_image  # pylint: disable=import-outside-toplevel

  image = skimage.data.chelsea()  # 300 x 451
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: the camera was turned; viewers rotate 90 degrees clockwise
  folder = tmp_path / 'in'
  folder.mkdir()
  Image.fromarray(image).save(folder / 'phone.jpg', exif=exif.tobytes())
  raw = (folder / 'phone.jpg').read_bytes()
  assert decode_image(raw)[0].shape == (300, 451, 3)
  assert decode_image(raw, exif_transpose=True)[0].shape == (451, 300, 3)
  assert segment.main([str(folder), '--checkpoint', str(converted), '--out', str(tmp_path / 'out')]) == 0
  levels = len(load_meta(moco_folder)['num_clusters'])
  assert np.load(tmp_path / 'out' / 'phone.npz')['hierarchy'].shape == (levels, 451, 300)


def test_the_image_to_hierarchy_class_leaves_the_name_segmenter_free():
  """``Segmenter`` is the decoder model of the original's segmentation fork; the image -> hierarchy class is
  ``HierarchySegmenter`` in the library, the command and the notebooks."""
  import json  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel

  from conftest import REPO_ROOT  # pylint: disable=import-outside-toplevel

  assert isinstance(segment.HierarchySegmenter, type) and not hasattr(segment, 'Segmenter')
  for notebook in sorted((REPO_ROOT / 'colabs').glob('*.ipynb')):
    code = '\n'.join(''.join(cell['source']) for cell in json.loads(notebook.read_text())['cells']
                     if cell['cell_type'] == 'code')
    assert not re.search(r'(?<!Hierarchy)Segmenter\b', code), f'{notebook.name} still uses the old name'
