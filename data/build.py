"""Build a dataset of this folder as TFDS ArrayRecord without TensorFlow (TFDS's ``tfds build`` needs TensorFlow,
apache-beam and mlcroissant just to start).

    python data/build.py ade20k --manual_dir=~/Downloads/ade20k [--data_dir=~/tensorflow_datasets]

Same builders, same output as ``tfds build data/<name> --manual_dir=...`` (see data/README.md).
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent

if __name__ == '__main__':
  try:
    from cast_jax.data import tfds_builders
  except ModuleNotFoundError:  # run from a clone that is not pip-installed: the package sits next to data/
    sys.path.insert(0, str(HERE.parent))
    from cast_jax.data import tfds_builders
  tfds_builders.main(data_root=HERE)
