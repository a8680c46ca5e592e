"""The layout of a run folder (a training ``workdir``), and reading weights from one or from a released ``.npz``.

This module is the only place that knows where a run keeps its files; the trainer writes through it and
inference, evaluation and ``init_checkpoint`` read through it, without importing the training package::

    <workdir>/config.json                 the run's config (ml_collections as JSON)
    <workdir>/metrics.jsonl               one JSON object per logged step: {"step": ..., "loss": ..., ...}
    <workdir>/tensorboard/                TensorBoard event files
    <workdir>/pictures/<tag>_<step>.png   PNG copies of the image summaries ('/' in a tag becomes '_')
    <workdir>/parameters.txt              the per-array parameter table (clu.parameter_overview)
    <workdir>/profile/                    jax.profiler traces, when config.profile asks for one
    <workdir>/owner.json                  which process (host, pid) is writing the folder
    <workdir>/checkpoints/<step>/state    the train state (orbax, StandardCheckpointHandler)
    <workdir>/checkpoints/<step>/data     the data iterator's position (grain's checkpoint handler)

Orbax writes a checkpoint into a temporary folder (``<step>.orbax-checkpoint-tmp-*``) and renames it to
``<step>`` when complete; ``finished_steps`` asks orbax which folders are finalized.

Released weights (``python -m cast_jax.convert``, ``cast_jax.published``) are one ``.npz``;
``load_variables`` reads either form.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import numpy as np

CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'
PICTURES = 'pictures'
PARAMETERS = 'parameters.txt'
PROFILE = 'profile'
OWNER = 'owner.json'
CHECKPOINTS = 'checkpoints'
STATE_ITEM = 'state'  # checkpoint items: the train state and the data iterator's position
DATA_ITEM = 'data'


class RunFolderError(ValueError):
  """A path that is not (or not yet) a usable run folder; the message says what is missing."""


class RunFolder:
  """Paths of one run folder plus the reads every user of a run needs. Creates nothing by itself."""

  def __init__(self, workdir):
    # Absolute: orbax refuses relative checkpoint paths, and messages should name the folder unambiguously.
    self.root = pathlib.Path(workdir).expanduser().absolute()

  def __repr__(self) -> str:
    return f'RunFolder({str(self.root)!r})'

  # ------------------------------------------------------------------ paths

  @property
  def config_path(self) -> pathlib.Path:
    return self.root / CONFIG

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.root / METRICS

  @property
  def tensorboard_dir(self) -> pathlib.Path:
    return self.root / TENSORBOARD

  @property
  def pictures_dir(self) -> pathlib.Path:
    return self.root / PICTURES

  @property
  def parameters_path(self) -> pathlib.Path:
    return self.root / PARAMETERS

  @property
  def profile_dir(self) -> pathlib.Path:
    return self.root / PROFILE

  @property
  def owner_path(self) -> pathlib.Path:
    return self.root / OWNER

  @property
  def checkpoints_dir(self) -> pathlib.Path:
    return self.root / CHECKPOINTS

  def picture_path(self, tag: str, step: int) -> pathlib.Path:
    return self.pictures_dir / f"{tag.replace('/', '_')}_{int(step):07d}.png"

  def checkpoint_dir(self, step: int) -> pathlib.Path:
    return self.checkpoints_dir / str(int(step))

  # ------------------------------------------------------------------ reads

  def is_run(self) -> bool:
    """Whether a run has started here (its config was written)."""
    return self.config_path.is_file()

  def read_config(self) -> dict[str, Any]:
    if not self.config_path.is_file():
      raise RunFolderError(f'{self.root} has no {CONFIG}: it is not a cast_jax workdir (python -m cast_jax.main '
                           '--workdir=DIR writes one), or its run never started')
    return json.loads(self.config_path.read_text(encoding='utf-8'))

  def write_config(self, config: dict[str, Any]) -> None:
    """Indented JSON; values JSON has no type for (paths, dtypes, ...) are written with ``str``."""
    self.root.mkdir(parents=True, exist_ok=True)
    self.config_path.write_text(json.dumps(config, indent=2, default=str) + '\n', encoding='utf-8')

  def read_metrics(self) -> list[dict[str, Any]]:
    """Every line of metrics.jsonl (empty before the first log). "nan"/"inf" strings stay strings."""
    if not self.metrics_path.exists():
      return []
    return [json.loads(line) for line in self.metrics_path.read_text(encoding='utf-8').splitlines() if line]

  def finished_steps(self) -> list[int]:
    """Steps with a complete checkpoint holding the train state, ascending (orbax decides what is finalized)."""
    if not self.checkpoints_dir.is_dir():
      return []
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    return sorted(step for step in ocp.path.step.checkpoint_steps(self.checkpoints_dir)
                  if (self.checkpoint_dir(step) / STATE_ITEM).is_dir())

  def latest_step(self) -> Optional[int]:
    steps = self.finished_steps()
    return steps[-1] if steps else None

  def model_spec(self):
    """The ModelSpec the run trained (from config.json's ``model`` block)."""
    from cast_jax.models.variants import ModelSpec  # pylint: disable=import-outside-toplevel

    return ModelSpec.from_config(self.read_config()['model'])

  def read_state(self, step: Optional[int] = None) -> dict[str, Any]:
    """The train state of checkpoint ``step`` (default: the latest finished one) as a tree of numpy arrays.

    Read with orbax's own checkpointer, without knowing the state's structure in advance: for inference and
    evaluation, not for resuming (which restores onto the devices with shardings, see train/checkpoint.py).
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise RunFolderError(f'{self.checkpoints_dir} holds no finished checkpoint (the run saves one every '
                             'config.checkpoint_every_steps steps and at its end)')
    elif step not in self.finished_steps():
      raise RunFolderError(f'{self.checkpoints_dir} has no finished checkpoint of step {step}; finished: '
                           f'{self.finished_steps()}')
    import jax  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(self.checkpoint_dir(step) / STATE_ITEM)
    return jax.tree_util.tree_map(np.asarray, state)


def load_variables(path, use_ema: bool = False):
  """(ModelSpec, {'params', 'batch_stats'}) from a released/converted ``.npz`` or a workdir's latest checkpoint.

  use_ema: take a supervised run's weight EMA instead of its weights (MoCo's momentum encoder otherwise).
  """
  path = pathlib.Path(path).expanduser()
  if path.is_file():
    from cast_jax.convert import load_converted  # pylint: disable=import-outside-toplevel

    spec, variables = load_converted(path)
    return spec, {k: variables[k] for k in ('params', 'batch_stats') if k in variables}
  run = RunFolder(path)
  if not run.config_path.is_file() or not run.checkpoints_dir.is_dir():
    from cast_jax.torch_pickle import CheckpointError  # pylint: disable=import-outside-toplevel

    raise CheckpointError(f'{path} is neither a converted .npz (python -m cast_jax.convert) nor a cast_jax '
                          f'workdir with {CONFIG} and {CHECKPOINTS}/')
  state = run.read_state()
  prefix = 'ema_' if use_ema else ''
  if state.get(prefix + 'params') is None:
    raise RunFolderError(f'{path}: the checkpoint has no {prefix}params (use_ema needs a run with an EMA)')
  variables = {'params': state[prefix + 'params'], 'batch_stats': state.get(prefix + 'batch_stats') or {}}
  return run.model_spec(), variables


def encoder_only(spec, variables):
  """(spec, {'params', 'batch_stats'}) of the bare encoder inside any checkpoint: a MoCo checkpoint's
  ``encoder`` subtree without projector, predictor or momentum branch; no classifier head in the spec."""
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
  if spec.moco:
    variables = {k: v.get('encoder', {}) for k, v in variables.items()}
  return spec.replace(moco=False, num_classes=0), variables
