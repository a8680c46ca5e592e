"""ADE20K (ADEChallengeData2016, 150 classes) as TFDS ArrayRecord with class-index label maps.

    python data/build.py ade20k --manual_dir=<folder with ADEChallengeData2016.zip>   # no TensorFlow
    tfds build data/ade20k --manual_dir=<same folder>   # TFDS CLI: TensorFlow, apache-beam, mlcroissant

Splits 'train' (20,210) and 'validation' (2,000). Label maps keep the raw ids (0 = 'other', 1..150): the
Segmenter's reduce_zero_label (0 -> 255, k -> k - 1) is applied by the recipe (``cast_jax.data.segmentation``,
``DATASETS['ade20k']``). TFDS's own ``scene_parse150`` is a different release (instance PNGs), not this one.
Logic: ``cast_jax.data.tfds_builders.Ade20k`` and ``cast_jax.data.segmentation_archives.ade20k_examples``.
"""

from cast_jax.data import tfds_builders


class Builder(tfds_builders.Ade20k):
  """ADEChallengeData2016 -> {'image', 'label_map', 'file_name'}."""
