"""``cast_jax.published``: download (here from a file:// mirror of the hub layout), convert once, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from cast_jax import published
from cast_jax.convert import load_converted
from conftest import checkpoint_path, golden_folder, load_meta, require_golden


def _moco_folder() -> str:
  """The golden plain-CAST MoCo fixture (kind 'moco', arch without 'seg'): the published checkpoints' format."""
  require_golden()
  return golden_folder('moco', seg_arch=False)


@pytest.fixture()
def hub(tmp_path):
  """A local mirror holding the golden MoCo checkpoint (published format) at moco_cast_base_in1k's path."""
  root = tmp_path / 'hub'
  target = root / published.PUBLISHED['moco_cast_base_in1k'].path
  target.parent.mkdir(parents=True)
  target.symlink_to(checkpoint_path(_moco_folder()))
  return root


def test_download_and_convert_once(hub, tmp_path, capsys):
  directory = tmp_path / 'ckpts'
  path = published.converted('moco_cast_base_in1k', directory, hub=hub.as_uri())
  assert path == directory / 'moco_cast_base_in1k.npz'
  assert 'downloading file://' in capsys.readouterr().out
  spec, variables = load_converted(path)
  width = load_meta(_moco_folder())['embed_dim']
  assert spec.kind == 'cast' and spec.moco and spec.embed_dim == width
  assert variables['params']['encoder']['cls_token'].shape == (1, 1, width)
  assert not list(directory.glob('*.part'))
  # Both files are reused: with the mirror gone, a second call still answers, and reads nothing.
  (hub / published.PUBLISHED['moco_cast_base_in1k'].path).unlink()
  assert published.converted('moco_cast_base_in1k', directory, hub=hub.as_uri()) == path
  np.testing.assert_array_equal(load_converted(path)[1]['params']['encoder']['cls_token'],
                                variables['params']['encoder']['cls_token'])


def test_failed_download_says_where_and_leaves_nothing(hub, tmp_path):
  directory = tmp_path / 'ckpts'
  with pytest.raises(published.DownloadError, match='deit/imagenet1k/cast_small/best_checkpoint.pth.*by hand'):
    published.download('deit_cast_small_in1k', directory, hub=hub.as_uri(), quiet=True)
  assert list(directory.iterdir()) == []


def test_unknown_name_lists_the_known_ones(tmp_path):
  with pytest.raises(ValueError, match='moco_cast_base_in1k'):
    published.converted('cast_huge', tmp_path)


def test_command(hub, tmp_path, capsys):
  assert published.main(['--list']) == 0
  listing = capsys.readouterr().out
  assert all(name in listing for name in published.PUBLISHED)
  assert 'https://huggingface.co/twke/CAST/resolve/main/snapshots/moco/imagenet1k/cast_base/' in listing
  assert published.main(['moco_cast_base_in1k', '--dir', str(tmp_path / 'c'), '--hub', hub.as_uri()]) == 0
  assert capsys.readouterr().out.strip().endswith('moco_cast_base_in1k.npz')
  assert published.main(['nope', '--dir', str(tmp_path / 'c')]) == 1
  assert 'unknown published checkpoint' in capsys.readouterr().err


def test_a_download_cut_short_is_an_error_not_a_file(tmp_path, monkeypatch):
  """urllib returns short reads without complaint when a server closes early; the announced length catches it."""
  import io  # pylint: disable=import-outside-toplevel

  class CutShort(io.BytesIO):
    headers = {'Content-Length': '1000000'}

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

  monkeypatch.setattr(published.urllib.request, 'urlopen', lambda request, timeout: CutShort(b'x' * 1000))
  with pytest.raises(published.DownloadError, match='closed after 1000 of 1000000 bytes'):
    published.download('moco_cast_base_in1k', tmp_path, quiet=True)
  assert list(tmp_path.iterdir()) == []


def test_a_fresh_download_that_does_not_convert_is_removed(tmp_path):
  hub = tmp_path / 'hub'
  target = hub / published.PUBLISHED['deit_cast_small_in1k'].path
  target.parent.mkdir(parents=True)
  target.write_bytes(b'<html>rate limited</html>')  # what a hub's error page looks like once saved
  directory = tmp_path / 'ckpts'
  with pytest.raises(ValueError):
    published.converted('deit_cast_small_in1k', directory, hub=hub.as_uri(), quiet=True)
  assert list(directory.iterdir()) == []
