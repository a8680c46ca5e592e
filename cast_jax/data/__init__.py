"""Datasets and input pipelines for cast_jax."""


def __getattr__(name):
  # PartWholeDataset (the built-in procedural dataset) is imported on first use, not here: an eager import
  # would make `python -m cast_jax.data.partworld` warn that the module was imported before it ran.
  if name == 'PartWholeDataset':
    from cast_jax.data.partworld import PartWholeDataset
    return PartWholeDataset
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
