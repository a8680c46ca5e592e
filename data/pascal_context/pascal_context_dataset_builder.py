"""Pascal Context (60 classes, background 0 included) as TFDS ArrayRecord with class-index label maps.

    python data/build.py pascal_context --manual_dir=<folder>   # no TensorFlow
    tfds build data/pascal_context --manual_dir=<folder>   # TFDS CLI: TensorFlow, apache-beam, mlcroissant

The folder holds VOCtrainval_03-May-2010.tar (or its VOCdevkit/VOC2010/JPEGImages) and the 60-class labels
and lists that mmseg's pascal_context.py converter or the Segmenter's prepare_pcontext.py write:
VOCdevkit/VOC2010/SegmentationClassContext/<id>.png and ImageSets/SegmentationContext/{train,val}.txt.
Splits 'train' (4,998) and 'validation' (5,105). Logic: ``cast_jax.data.tfds_builders.PascalContext``.
"""

from cast_jax.data import tfds_builders


class Builder(tfds_builders.PascalContext):
  """VOC2010 images + 60-class label PNGs -> {'image', 'label_map', 'file_name'}."""
