"""The segmentation datasets' own files -> class-index examples: the logic of the ``data/`` TFDS builders.

Plain Python (PIL, numpy; scipy for SBD's ``.mat`` files): no TFDS and no TensorFlow, so it is tested on tiny
synthetic copies of each layout (``tests/test_data_builders.py``). ``cast_jax.data.tfds_builders`` wraps these
generators into ``tfds.core.GeneratorBasedBuilder`` classes, and ``data/<name>/`` holds the builders a user runs.

Every generator yields ``(key, {'image': bytes, 'label_map': bytes, 'file_name': str, ...})``: the image file's
own bytes (JPEG, never re-encoded; the pipeline decodes it) and the label map as a single-channel ('L') PNG of
class indices, shape (H, W) — never a palette rendered to RGB. The ids are kept as the dataset stores them:

- ADE20K (``ADEChallengeData2016``): 0 = 'other', 1..150 the classes. The Segmenter's ``reduce_zero_label``
  (0 -> 255, k -> k - 1) is applied by the recipe (``cast_jax.data.segmentation.SegmentationTrain`` /
  ``SegmentationEval`` with ``reduce_zero_label=True``, set for 'ade20k' in ``segmentation.DATASETS``), not here.
- Pascal Context: the 60-class maps, 0 = background (a class of the mIoU), 1..59.
- VOC 2012 + SBD: 0 = background, 1..20, 255 = VOC's void border.

Bad input stops the build with the file named: an image without its label map (or the reverse), a file a list
names that is not there, an image and label of different sizes, a label id outside the dataset's classes other
than 255, an RGB label PNG. Nothing is skipped silently.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import tarfile
import zipfile
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

IGNORE_LABEL = 255
Example = tuple[str, dict]


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """Valid label ids of a dataset: ``0 .. num_ids - 1`` and ``IGNORE_LABEL``."""

  dataset: str
  num_ids: int
  meaning: str


ADE20K = LabelSpec('ade20k', 151, "0 = 'other' (ignored after the recipe's reduce_zero_label), 1..150 the classes")
PASCAL_CONTEXT = LabelSpec('pascal_context', 60, '0 = background, 1..59 the classes (60-class version)')
VOC = LabelSpec('voc_sbd', 21, '0 = background, 1..20 the classes')

# Split name -> the dataset's own folder / list name.
ADE20K_SPLITS = {'train': 'training', 'validation': 'validation'}
PASCAL_CONTEXT_SPLITS = {'train': 'train', 'validation': 'val'}
# SPML's lists (SPML/datasets/voc12/): 10,582 train+ (SBD train_aug) and 1,449 val lines; the other names are the
# usual ones of the same id sets (plain ids, or DeepLab's "image label" lines).
VOC_SBD_LISTS = {'train_aug': ('panoptic_train+_hed.txt', 'train+.txt', 'train_aug.txt', 'trainaug.txt'),
                 'validation': ('panoptic_val.txt', 'val.txt')}


# ---------------------------------------------------------------------------------------------- reading files

def read_label_png(path: pathlib.Path) -> np.ndarray:
  """A label PNG -> (H, W) class indices (uint8, or int32 for 16-bit files).

  Palette ('P') PNGs give their palette *indices* (what VOC stores as class ids); ``convert('L')`` would give the
  luminance of the palette colour instead, so it is never used. RGB label images are refused: their colours are
  not ids.
  """
  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      if mode in ('L', 'P'):
        return np.asarray(image, np.uint8).copy()
      if mode in ('I', 'I;16', 'I;16B', 'I;16L'):
        return np.asarray(image).astype(np.int32)
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'{path}: cannot read the label PNG ({type(e).__name__}: {e})') from e
  raise ValueError(f'{path}: a {mode} image; label maps must be single-channel class indices (a palette or '
                   'grayscale PNG). A label map rendered to colours cannot be turned back into ids here: use the '
                   "dataset's original label files.")


def read_sbd_mat(path: pathlib.Path) -> np.ndarray:
  """SBD's ``cls/<id>.mat`` -> (H, W) uint8 class ids from ``GTcls.Segmentation`` (0 background, 1..20)."""
  from scipy import io as scipy_io  # pylint: disable=import-outside-toplevel  (only SBD needs scipy)

  try:
    mat = scipy_io.loadmat(path, squeeze_me=True, struct_as_record=False)
  except Exception as e:  # scipy raises several types for a file that is not a MATLAB file
    raise ValueError(f'{path}: cannot read the SBD .mat file ({type(e).__name__}: {e})') from e
  if 'GTcls' not in mat or not hasattr(mat['GTcls'], 'Segmentation'):
    keys = sorted(k for k in mat if not k.startswith('__'))
    raise ValueError(f"{path}: no GTcls.Segmentation in this .mat file (keys {keys}); expected SBD's "
                     'benchmark_RELEASE/dataset/cls/<id>.mat')
  label = np.asarray(mat['GTcls'].Segmentation)
  if label.ndim != 2:
    raise ValueError(f'{path}: GTcls.Segmentation has shape {label.shape}; expected (H, W) class ids')
  if label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError(f'{path}: GTcls.Segmentation holds ids {label.min()}..{label.max()}, outside 0..255')
  return label.astype(np.uint8)


def image_hw(path: pathlib.Path) -> tuple[int, int]:
  """(height, width) from the image file's header (no full decode)."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'{path}: cannot read the image ({type(e).__name__}: {e})') from e
  return height, width


def check_label(label: np.ndarray, spec: LabelSpec, path: os.PathLike) -> None:
  """Raises naming ``path`` when an id is outside ``[0, spec.num_ids)`` and is not 255."""
  ids = np.unique(label)
  bad = ids[((ids < 0) | (ids >= spec.num_ids)) & (ids != IGNORE_LABEL)]
  if bad.size:
    raise ValueError(f'{path}: label ids {bad[:10].tolist()} are outside [0, {spec.num_ids}) and are not the ignore '
                     f'id {IGNORE_LABEL}; {spec.dataset} ids are {spec.meaning}. Is this the right label file?')


def encode_label_png(label: np.ndarray) -> bytes:
  """(H, W) class ids 0..255 -> a grayscale PNG that decodes (PIL or cv2) to the same ids."""
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(label, np.uint8), 'L').save(buffer, format='PNG')
  return buffer.getvalue()


def make_example(image_path: pathlib.Path, label: np.ndarray, label_path: os.PathLike, spec: LabelSpec,
                 **extra) -> dict:
  """The record of one image: checks the label's ids and that it covers the image pixel for pixel."""
  check_label(label, spec, label_path)
  hw = image_hw(image_path)
  if tuple(label.shape) != hw:
    raise ValueError(f'{label_path}: label map is {label.shape[0]}x{label.shape[1]} (HxW) but its image '
                     f'{image_path} is {hw[0]}x{hw[1]}; every label map must cover its image pixel for pixel')
  return dict({'image': image_path.read_bytes(), 'label_map': encode_label_png(label),
               'file_name': image_path.name}, **extra)


def read_list(list_file: pathlib.Path) -> list[tuple[int, str, Optional[str]]]:
  """(line number, image id, label field or None) of each non-empty line of a split list.

  The id is the file stem of the line's first field. Accepts plain ids (``2008_000002``), SPML's
  ``VOC2012/JPEGImages/X.jpg VOC2012/segcls/X.png ...`` lines and DeepLab's
  ``/JPEGImages/X.jpg /SegmentationClassAug/X.png``; the second field, when there is one, names a label file.
  A repeated id is an error.
  """
  if not list_file.is_file():
    raise FileNotFoundError(f'split list {list_file} does not exist')
  entries, seen = [], {}
  for number, line in enumerate(list_file.read_text().splitlines(), start=1):
    fields = [f.replace('\\', '/') for f in line.split()]
    if not fields:
      continue
    image_id = pathlib.PurePosixPath(fields[0]).stem
    if image_id in seen:
      raise ValueError(f'{list_file}:{number}: image {image_id!r} is listed twice (first at line {seen[image_id]})')
    seen[image_id] = number
    entries.append((number, image_id, fields[1] if len(fields) > 1 else None))
  if not entries:
    raise ValueError(f'split list {list_file} names no image')
  return entries


# ------------------------------------------------------------------------------------------- finding folders

def find_dir(roots: Sequence[pathlib.Path], candidates: Sequence[str]) -> Optional[pathlib.Path]:
  """The first ``root / candidate`` (roots outer, candidates inner) that is a folder, or None."""
  for root in roots:
    for candidate in candidates:
      path = root / candidate
      if path.is_dir():
        return path
  return None


def require_dir(roots: Sequence[pathlib.Path], candidates: Sequence[str], what: str, hint: str) -> pathlib.Path:
  """``find_dir`` or a FileNotFoundError listing every place looked at."""
  found = find_dir(roots, candidates)
  if found is None:
    looked = [str(root / c) for root in roots for c in candidates]
    raise FileNotFoundError(f'{what} not found; looked for: {", ".join(looked)}. {hint}')
  return found


def require_file(roots: Sequence[pathlib.Path], names: Sequence[str], what: str, hint: str) -> pathlib.Path:
  """The first ``root / name`` that is a file, or a FileNotFoundError listing every place looked at."""
  for root in roots:
    for name in names:
      if (root / name).is_file():
        return root / name
  looked = [str(root / n) for root in roots for n in names]
  raise FileNotFoundError(f'{what} not found; looked for: {", ".join(looked)}. {hint}')


def extract_archive(archive: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
  """Unpacks a .zip / .tar / .tar.gz / .tgz once into ``destination`` (a ``.done`` marker makes reruns free).

  TFDS's own extractor needs TensorFlow (``tf.io.gfile``), hence this one. Members that would land outside
  ``destination`` (absolute paths, ``..``, links) are refused.
  """
  marker = destination / '.done'
  if marker.exists():
    return destination
  destination.mkdir(parents=True, exist_ok=True)
  root = destination.resolve()

  def inside(name: str) -> bool:
    target = (root / name).resolve()
    return target == root or root in target.parents

  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zipped:
      for name in zipped.namelist():
        if not inside(name):
          raise ValueError(f'{archive}: member {name!r} would be written outside {destination}; not extracting')
      zipped.extractall(destination)
  elif tarfile.is_tarfile(archive):
    with tarfile.open(archive) as tarred:
      for member in tarred:
        if not inside(member.name) or not (member.isfile() or member.isdir()):
          raise ValueError(f'{archive}: member {member.name!r} is a link or would be written outside '
                           f'{destination}; not extracting')
      if hasattr(tarfile, 'data_filter'):  # Python >= 3.10.12 / 3.11.4: the safe filter, and no warning on 3.12+
        tarred.extractall(destination, filter='data')
      else:
        tarred.extractall(destination)
  else:
    raise ValueError(f'{archive} is neither a zip nor a tar archive')
  marker.touch()
  return destination


# ------------------------------------------------------------------------------------------------- datasets

def ade20k_examples(root: pathlib.Path, split: str) -> Iterator[Example]:
  """ADEChallengeData2016 -> examples of ``split`` ('train': 20,210 images, 'validation': 2,000).

  root: the ``ADEChallengeData2016`` folder, holding ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` (grayscale ids 0..150). Images and label maps pair by file stem.
  """
  if split not in ADE20K_SPLITS:
    raise ValueError(f'unknown ADE20K split {split!r}; choose one of {sorted(ADE20K_SPLITS)}')
  folder = ADE20K_SPLITS[split]
  images_dir, labels_dir = root / 'images' / folder, root / 'annotations' / folder
  for path in (images_dir, labels_dir):
    if not path.is_dir():
      raise FileNotFoundError(f'{path} does not exist; expected ADEChallengeData2016/{{images,annotations}}/'
                              f'{folder} (unpack ADEChallengeData2016.zip)')
  images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in ('.jpg', '.jpeg')}
  labels = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() == '.png'}
  if not images:
    raise ValueError(f'{images_dir} holds no .jpg image')
  unlabelled, orphans = sorted(set(images) - set(labels)), sorted(set(labels) - set(images))
  if unlabelled:
    raise FileNotFoundError(f'{len(unlabelled)} images of {images_dir} have no label map in {labels_dir} '
                            f'(first: {labels_dir / (unlabelled[0] + ".png")})')
  if orphans:
    raise FileNotFoundError(f'{len(orphans)} label maps of {labels_dir} have no image in {images_dir} '
                            f'(first: {images_dir / (orphans[0] + ".jpg")})')
  for stem in sorted(images):
    yield stem, make_example(images[stem], read_label_png(labels[stem]), labels[stem], ADE20K)


def pascal_context_examples(images_dir: pathlib.Path, labels_dir: pathlib.Path, lists_dir: pathlib.Path,
                            split: str) -> Iterator[Example]:
  """Pascal Context (60 classes) -> examples of ``split`` ('train': 4,998 images, 'validation': 5,105).

  images_dir: VOC2010's ``JPEGImages``; labels_dir: ``SegmentationClassContext`` (single-channel PNG ids
  0..59, as mmseg's ``pascal_context.py`` converter and the Segmenter's ``prepare_pcontext.py`` write them);
  lists_dir: ``ImageSets/SegmentationContext`` with ``train.txt`` / ``val.txt``.
  """
  if split not in PASCAL_CONTEXT_SPLITS:
    raise ValueError(f'unknown Pascal Context split {split!r}; choose one of {sorted(PASCAL_CONTEXT_SPLITS)}')
  list_file = lists_dir / f'{PASCAL_CONTEXT_SPLITS[split]}.txt'
  for number, image_id, _ in read_list(list_file):
    image_path, label_path = images_dir / f'{image_id}.jpg', labels_dir / f'{image_id}.png'
    for path in (image_path, label_path):
      if not path.is_file():
        raise FileNotFoundError(f'{list_file}:{number} names {image_id!r} but {path} does not exist')
    yield image_id, make_example(image_path, read_label_png(label_path), label_path, PASCAL_CONTEXT)


def voc_sbd_examples(voc_dir: pathlib.Path, sbd_cls_dir: Optional[pathlib.Path],
                     list_file: pathlib.Path) -> Iterator[Example]:
  """Pascal VOC 2012 + SBD -> the examples ``list_file`` names (SPML: train+ 10,582, val 1,449), in list order.

  voc_dir: ``VOCdevkit/VOC2012`` (``JPEGImages``, ``SegmentationClass`` palette PNGs); sbd_cls_dir: SBD's
  ``benchmark_RELEASE/dataset/cls`` (``<id>.mat``), or None. Each image's label map, first found of:

  1. ``list``: the file the list line's second field names, relative to ``VOCdevkit`` (SPML's lines: SegSort's
     ``VOC2012/segcls/<id>.png``, exactly what SPML reads) or to ``VOC2012`` (DeepLab's), when it is there;
  2. ``voc``: VOC's ``SegmentationClass/<id>.png``, its palette indices (255 on the void border);
  3. ``sbd``: SBD's ``cls/<id>.mat`` (``GTcls.Segmentation``; SBD has no void).

  2-before-3 is the usual train_aug construction (mmseg's ``voc_aug``); which of the two SegSort's ``segcls``
  holds for images both datasets label is not documented. ``label_source`` records the choice per image.
  """
  images_dir, voc_labels = voc_dir / 'JPEGImages', voc_dir / 'SegmentationClass'
  for number, image_id, label_field in read_list(list_file):
    image_path = images_dir / f'{image_id}.jpg'
    if not image_path.is_file():
      raise FileNotFoundError(f'{list_file}:{number} names {image_id!r} but {image_path} does not exist')
    listed = [base / label_field.lstrip('/') for base in (voc_dir.parent, voc_dir)] if label_field else []
    png = voc_labels / f'{image_id}.png'
    mat = sbd_cls_dir / f'{image_id}.mat' if sbd_cls_dir is not None else None
    listed_found = [p for p in listed if p.is_file()]
    if listed_found:
      label_path, source = listed_found[0], 'list'
      label = read_label_png(label_path)
    elif png.is_file():
      label, label_path, source = read_label_png(png), png, 'voc'
    elif mat is not None and mat.is_file():
      label, label_path, source = read_sbd_mat(mat), mat, 'sbd'
    else:
      looked = [str(p) for p in listed + [png] + ([mat] if mat is not None else [])]
      raise FileNotFoundError(f'{list_file}:{number} names {image_id!r} but it has no label map: none of '
                              f'{", ".join(looked)} exists')
    yield image_id, make_example(image_path, label, label_path, VOC, label_source=source)
