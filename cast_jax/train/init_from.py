"""Compatibility shim: reading checkpoints lives in ``cast_jax.run_folder``, laying them onto a model in
``cast_jax.loading`` (both importable without ``cast_jax.train``); which checkpoints a trainer starts from is declared by its task (``tasks.start_rules``)."""

from __future__ import annotations

from typing import Any

from cast_jax.loading import load
from cast_jax.models.variants import ModelSpec
# Reading a checkpoint (an .npz or a workdir) belongs to the run folder's owner; re-exported for callers here.
from cast_jax.run_folder import encoder_only, load_variables  # noqa: F401  pylint: disable=unused-import

HEAD = 'params/head/.*'


def adapt(variables, source: ModelSpec, fresh) -> tuple[dict[str, Any], list[str]]:
  """``variables`` of a ``source`` model laid strictly onto ``fresh`` for evaluation: the encoder must fit
  exactly (``loading.LoadError`` names every leaf that does not); a classifier head the checkpoint lacks stays
  fresh and is reported, one the model lacks is dropped. Returns (variables, names kept fresh)."""
  _, variables = encoder_only(source, variables)
  fresh = {k: v for k, v in fresh.items() if k in ('params', 'batch_stats')}
  wants_head, has_head = 'head' in fresh.get('params', {}), 'head' in variables.get('params', {})
  return load(fresh, variables, dont_load=(HEAD,) if wants_head and not has_head else (),
              skip_unexpected=(HEAD,), source='the checkpoint')
