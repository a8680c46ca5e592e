"""decode_image against the original's loader (torchvision's pil_loader: ``Image.open(f).convert('RGB')``)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cast_jax.data.decode import decode_image


def _encoded(img: Image.Image, fmt: str = 'PNG') -> bytes:
  buffer = io.BytesIO()
  img.save(buffer, fmt)
  return buffer.getvalue()


def _pil_loader(data: bytes) -> np.ndarray:
  """What the original's data loader hands its transforms."""
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def test_transparency_is_dropped_as_the_original_loader_drops_it():
  rgba = np.zeros((4, 5, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 255, 128  # half-transparent red: red in the original, not pink or white
  rgba[0, 0] = (10, 200, 30, 0)  # fully transparent: the stored colour, not a background
  la = Image.fromarray(np.stack([np.full((3, 3), 90, np.uint8), np.full((3, 3), 40, np.uint8)], -1), 'LA')
  palette = Image.new('P', (3, 2))
  palette.putpalette([200, 10, 20] + [0, 0, 0] * 255)
  palette.info['transparency'] = 0  # palette entry 0 (every pixel) is transparent
  cases = {'RGBA': _encoded(Image.fromarray(rgba, 'RGBA')), 'LA': _encoded(la), 'P+transparency': _encoded(palette)}
  expected_first = {'RGBA': (10, 200, 30), 'LA': (90, 90, 90), 'P+transparency': (200, 10, 20)}
  for name, data in cases.items():
    image, reason = decode_image(data)
    assert reason is None, (name, reason)
    np.testing.assert_array_equal(image, _pil_loader(data), err_msg=name)
    assert tuple(image[0, 0]) == expected_first[name], (name, image[0, 0])
  image, _ = decode_image(cases['RGBA'])
  assert tuple(image[1, 1]) == (255, 0, 0)


def test_four_channel_arrays_drop_alpha_too():
  array = np.zeros((2, 3, 4), np.uint8)
  array[..., 1], array[..., 3] = 180, 0
  image, reason = decode_image(array)
  assert reason is None and image.shape == (2, 3, 3)
  assert (image == np.array([0, 180, 0], np.uint8)).all()
