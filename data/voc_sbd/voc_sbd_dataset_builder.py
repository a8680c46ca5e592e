"""Pascal VOC 2012 + SBD (SPML's train+ / val) as TFDS ArrayRecord with class-index label maps.

    python data/build.py voc_sbd --manual_dir=<folder>   # no TensorFlow
    tfds build data/voc_sbd --manual_dir=<folder>   # TFDS CLI: TensorFlow, apache-beam, mlcroissant

The folder holds VOCtrainval_11-May-2012.tar, SBD's benchmark.tgz (each as it is or unpacked) and SPML's lists
panoptic_train+_hed.txt and panoptic_val.txt. Splits 'train_aug' (10,582) and 'validation' (1,449); ids 0..20,
255 void. Labels: the segcls PNG a list line names when present, else VOC's palette PNG read as palette indices
(``convert('L')`` would give luminance), else SBD's cls/<id>.mat through GTcls.Segmentation (data/README.md).
Logic: ``cast_jax.data.tfds_builders.VocSbd``.
"""

from cast_jax.data import tfds_builders


class Builder(tfds_builders.VocSbd):
  """VOC 2012 JPEGs + VOC palette PNGs / SBD .mat labels -> {'image', 'label_map', 'file_name', 'label_source'}."""
