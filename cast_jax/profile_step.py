r"""Where a train step's time goes: a ``jax.profiler`` trace of a few steps, summed per XLA op.

    python -m cast_jax.profile_step                          # MoCo, cast_small, batch 8, 224 px, 196 superpixels
    python -m cast_jax.profile_step --batch 32 --steps 3 --top 25 --out /tmp/step_profile
    python -m cast_jax.profile_step --step deit --batch 32        # the DeiT supervised step (benchmark's)
    python -m cast_jax.profile_step --step segmenter --batch 2   # the ADE20K Segmenter, crop 512

The MoCo step is the one ``python -m cast_jax.benchmark --only train_step`` times (``benchmark.moco_step_setup``);
``--step segmenter`` the one ``--only seg_train_step`` times (``benchmark.seg_step_setup``; ``--seg-crop``,
``--seg-clusters``, ``--seg-classes`` as there).
After one warm-up step, ``--steps`` steps run under ``jax.profiler`` with a Perfetto trace. On CPU the trace
holds one event per executed XLA instruction (a fusion, a dot, a scatter, a while loop, ...); each event's own
time (its duration minus that of the events nested in it on the same thread) is attributed to the instruction
and, through the compiled HLO's metadata, to

  * ``kind``: what the instruction does (matmul/conv, scatter, gather, sort, reduce, elementwise, copy, ...),
  * ``phase``: forward or backward (an op named inside ``transpose(...)`` is part of a gradient),
  * ``source``: the innermost line of cast_jax that built it (``cast_jax/models/cast.py:120 segment_pool``).

Prints JSON lines: one summary (wall seconds per step; op seconds per step, which exceed the wall time where
XLA runs independent ops at once on several threads; and the share of op time in each phase), then the ``--top`` rows of each grouping, largest first, as seconds per step and percent of op time.
The trace itself stays in ``--out`` for Perfetto (ui.perfetto.dev) or TensorBoard.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Iterable

import jax

from cast_jax import malloc_hugepages, xla_cpu


# ---------------------------------------------------------------------------------------------- HLO metadata

# ``name = shape opcode(operands)``; a shape is one token or a parenthesised tuple (multi-output fusions, while).
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(?:\([^=]*?\)|\S+)\s+([\w\-]+)\(')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME_ID = re.compile(r'stack_frame_id=(\d+)')
_FUSION_KIND = re.compile(r'kind=(k\w+)')
_CUSTOM_FUSION = re.compile(r'"kind":"(__\w+)"')


def _table(lines: list[str], start: int) -> tuple[dict[int, str], int]:
  """The ``id body`` rows of one of the HLO text's FileNames/FunctionNames/... tables, and where it ends."""
  rows, index = {}, start
  while index < len(lines) and re.match(r'^\d+ ', lines[index]):
    number, body = lines[index].split(' ', 1)
    rows[int(number)] = body
    index += 1
  return rows, index


def parse_stack_frames(hlo_text: str) -> dict[int, list[tuple[str, int, str]]]:
  """stack_frame_id -> its frames, innermost first, as (file, line, function)."""
  lines = hlo_text.splitlines()
  tables = {}
  index = 0
  while index < len(lines):
    name = lines[index].strip()
    if name in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      tables[name], index = _table(lines, index + 1)
    else:
      index += 1
  if 'StackFrames' not in tables:
    return {}
  files = {k: v.strip('"') for k, v in tables['FileNames'].items()}
  functions = {k: v.strip('"') for k, v in tables['FunctionNames'].items()}
  locations = {}
  for key, body in tables['FileLocations'].items():
    fields = dict(re.findall(r'(\w+)=(\d+)', body))
    locations[key] = (files.get(int(fields['file_name_id']), '?'), int(fields['line']),
                      functions.get(int(fields['function_name_id']), '?'))
  frames = {}
  for key, body in tables['StackFrames'].items():
    fields = dict(re.findall(r'(\w+)=(\d+)', body))
    frames[key] = (int(fields['file_location_id']), int(fields.get('parent_frame_id', 0)))

  def chain(frame_id: int) -> list[tuple[str, int, str]]:
    out, seen = [], set()
    while frame_id in frames and frame_id not in seen:
      seen.add(frame_id)
      location, parent = frames[frame_id]
      out.append(locations[location])
      frame_id = parent
    return out

  return {key: chain(key) for key in frames}


def instruction_metadata(hlo_text: str) -> dict[str, dict]:
  """Instruction name -> {'opcode', 'op_name', 'frame', 'fusion_kind'} for every instruction of the module."""
  out = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, opcode = match.groups()
    op_name = _OP_NAME.search(line)
    frame = _FRAME_ID.search(line)
    fusion = _CUSTOM_FUSION.search(line) or _FUSION_KIND.search(line)
    out[name] = {'opcode': opcode, 'op_name': op_name.group(1) if op_name else '',
                 'frame': int(frame.group(1)) if frame else None,
                 'fusion_kind': fusion.group(1) if fusion and opcode == 'fusion' else ''}
  return out


def op_kind(name: str, meta: dict) -> str:
  """A coarse label of what an instruction does, from its opcode, fusion kind, name and op_name."""
  opcode, fusion_kind = meta.get('opcode', ''), meta.get('fusion_kind', '')
  primitive = meta.get('op_name', '').rsplit('/', 1)[-1]
  if opcode in ('dot', 'convolution') or 'dot' in fusion_kind or fusion_kind in ('__ynn_fusion', 'kOutput'):
    return 'matmul/conv'
  if opcode == 'fusion' and ('convolution' in name or 'dot' in name or 'ynn' in name):
    return 'matmul/conv'
  for word in ('scatter', 'gather', 'sort', 'while', 'conditional', 'copy', 'transpose', 'reduce-window',
               'select-and-scatter', 'dynamic-update-slice', 'dynamic-slice', 'concatenate', 'pad', 'iota',
               'rng', 'all-reduce', 'custom-call'):
    if opcode == word or name.startswith(word):
      return word
  if primitive in ('scatter-add', 'scatter_add', 'scatter'):
    return 'scatter'
  if primitive == 'gather':
    return 'gather'
  if opcode == 'reduce' or fusion_kind == 'kInput' or name.startswith('reduce'):
    return 'reduce'
  if opcode == 'fusion':
    return 'elementwise (fusion)'
  return opcode or 'other'


def op_source(meta: dict, frames: dict[int, list[tuple[str, int, str]]], package: str = 'cast_jax') -> str:
  """The innermost ``package`` line that built an instruction, as ``package/path.py:line function``."""
  for file, line, function in frames.get(meta.get('frame'), []):
    marker = f'{os.sep}{package}{os.sep}'
    if marker in file and f'{os.sep}profile_step.py' not in file:
      return f'{package}/{file.split(marker, 1)[1]}:{line} {function}'
  return '(outside cast_jax)'


def op_phase(meta: dict) -> str:
  return 'backward' if 'transpose(' in meta.get('op_name', '') else 'forward/update'


# -------------------------------------------------------------------------------------------- trace events

def self_times(events: Iterable[dict]) -> dict[str, float]:
  """Microseconds of own time per event name: each complete ('X') event's duration minus the durations of the
  events directly nested in it on the same thread."""
  per_thread = collections.defaultdict(list)
  for event in events:
    if event.get('ph') == 'X' and 'dur' in event:
      per_thread[(event.get('pid'), event.get('tid'))].append(event)
  totals = collections.Counter()
  for thread_events in per_thread.values():
    thread_events.sort(key=lambda e: (e['ts'], -e['dur']))
    stack = []  # [end time, name, child time]
    for event in thread_events:
      start, end = event['ts'], event['ts'] + event['dur']
      while stack and stack[-1][0] <= start:
        finished = stack.pop()
        totals[finished[1]] += finished[3] - finished[2]
      if stack:
        stack[-1][2] += event['dur']
      stack.append([end, event['name'], 0.0, event['dur']])
    while stack:
      finished = stack.pop()
      totals[finished[1]] += finished[3] - finished[2]
  return totals


def read_trace(directory: str) -> list[dict]:
  paths = sorted(glob.glob(os.path.join(directory, '**', '*.trace.json.gz'), recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'no *.trace.json.gz under {directory}: jax.profiler wrote no Perfetto trace')
  with gzip.open(paths[-1], 'rt') as handle:
    return json.load(handle)['traceEvents']


def group_op_times(times: dict[str, float], metadata: dict[str, dict], frames, steps: int) -> dict:
  """Seconds per step of the module's instructions, grouped by kind, phase and source."""
  groups = {'kind': collections.Counter(), 'phase': collections.Counter(), 'source': collections.Counter()}
  for name, microseconds in times.items():
    meta = metadata.get(name)
    if meta is None:  # runtime bookkeeping (dispatch, allocation), not an instruction of the step
      continue
    seconds = microseconds / 1e6 / steps
    groups['kind'][op_kind(name, meta)] += seconds
    groups['phase'][op_phase(meta)] += seconds
    groups['source'][op_source(meta, frames)] += seconds
  return groups


# ------------------------------------------------------------------------------------------------- command

def traced_op_times(run_once, hlo_text: str, steps: int, out: str) -> tuple[float, dict]:
  """(wall seconds per call, groups) of ``steps`` calls of ``run_once`` (which runs the compiled module of
  ``hlo_text`` once and blocks until it is done) under a Perfetto trace written to ``out``."""
  jax.profiler.start_trace(out, create_perfetto_trace=True)
  try:
    start = time.perf_counter()
    for _ in range(steps):
      run_once()
    wall = (time.perf_counter() - start) / steps
  finally:
    jax.profiler.stop_trace()
  groups = group_op_times(self_times(read_trace(out)), instruction_metadata(hlo_text), parse_stack_frames(hlo_text),
                          steps)
  return wall, groups


def profile_moco_step(variant: str, batch: int, image_size: int, num_superpixels: int, steps: int, dtype: str,
                      out: str) -> tuple[dict, dict]:
  """(summary, groups) of ``steps`` traced MoCo steps after one warm-up step."""
  from cast_jax import benchmark  # pylint: disable=import-outside-toplevel

  objective, state, batch_arrays = benchmark.moco_step_setup(variant, batch, image_size, num_superpixels, dtype)
  summary, groups = _profile_objective(objective, state, batch_arrays, steps, out)
  summary.update(model=f'moco_cast_{variant}', dtype=dtype, batch=batch, image_size=image_size,
                 superpixels=num_superpixels, images_per_s=round(batch / summary['wall_s_per_step'], 2))
  return summary, groups


def profile_deit_step(variant: str, batch: int, image_size: int, num_superpixels: int, steps: int, dtype: str,
                      out: str) -> tuple[dict, dict]:
  """(summary, groups) of ``steps`` traced DeiT supervised steps (``benchmark.deit_step_setup``) after a warm-up."""
  from cast_jax import benchmark  # pylint: disable=import-outside-toplevel

  objective, state, batch_arrays, spec = benchmark.deit_step_setup(variant, batch, image_size, num_superpixels,
                                                                   dtype)
  summary, groups = _profile_objective(objective, state, batch_arrays, steps, out)
  summary.update(model=f'cast_deit_{variant}', dtype=dtype, batch=batch, image_size=image_size,
                 superpixels=num_superpixels, classes=spec.num_classes,
                 images_per_s=round(batch / summary['wall_s_per_step'], 2))
  return summary, groups


def profile_segmenter_step(batch: int, crop: int, clusters: tuple[int, ...], classes: int, steps: int, dtype: str,
                           out: str) -> tuple[dict, dict]:
  """(summary, groups) of ``steps`` traced Segmenter steps (SGD-Nesterov, grid superpixels) after a warm-up."""
  from cast_jax import benchmark  # pylint: disable=import-outside-toplevel

  objective, state, batch_arrays, spec = benchmark.seg_step_setup(batch, crop, clusters, classes, dtype)
  summary, groups = _profile_objective(objective, state, batch_arrays, steps, out)
  summary.update(model='segmenter_cast_seg_deit_small', dtype=dtype, batch=batch, crop=crop,
                 superpixels=spec.max_segments, clusters=list(clusters), classes=classes,
                 images_per_s=round(batch / summary['wall_s_per_step'], 2))
  return summary, groups


def _profile_objective(objective, state, batch_arrays, steps: int, out: str) -> tuple[dict, dict]:
  """(summary, groups) of ``steps`` traced calls of ``objective.train_step`` (jitted, state donated) after one
  warm-up call."""
  compiled = jax.jit(objective.train_step, donate_argnums=(0,)).lower(state, batch_arrays).compile(
      compiler_options=xla_cpu.project_options())  # what the trainer compiles with
  carry = {'state': state}

  def run_once():
    carry['state'], metrics = compiled(carry['state'], batch_arrays)
    jax.block_until_ready((carry['state'], metrics))

  run_once()  # warm-up, outside the trace
  wall, groups = traced_op_times(run_once, compiled.as_text(), steps, out)
  summary = {'name': 'profile_step', 'steps': steps, 'wall_s_per_step': round(wall, 4),
             'op_s_per_step': round(sum(groups['phase'].values()), 4), 'trace_dir': out,
             'backend': jax.default_backend()}
  return summary, groups


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.profile_step', description=__doc__.split('\n\n')[0])
  parser.add_argument('--step', default='moco', choices=('moco', 'deit', 'segmenter'), help='which train step to trace')
  parser.add_argument('--variant', default='small', help='MoCo and DeiT: the CAST variant')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--superpixels', type=int, default=196, help='MoCo and DeiT: a square number (grid superpixels)')
  parser.add_argument('--seg-crop', type=int, default=512, help='Segmenter crop (ADE20K: 512)')
  parser.add_argument('--seg-clusters', default='320,160,80,40', help='Segmenter clusters per stage')
  parser.add_argument('--seg-classes', type=int, default=150, help='Segmenter classes (ADE20K: 150)')
  parser.add_argument('--steps', type=int, default=2, help='traced steps after one warm-up step')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--top', type=int, default=15, help='rows per grouping')
  parser.add_argument('--out', default=None, help='trace folder (default: a new temporary folder)')
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error('--steps must be at least 1')
  out = args.out or tempfile.mkdtemp(prefix='cast_jax_profile_')
  if args.step == 'segmenter':
    clusters = tuple(int(k) for k in args.seg_clusters.split(','))
    summary, groups = profile_segmenter_step(args.batch, args.seg_crop, clusters, args.seg_classes, args.steps,
                                             args.dtype, out)
  elif args.step == 'deit':
    summary, groups = profile_deit_step(args.variant, args.batch, args.image_size, args.superpixels, args.steps,
                                        args.dtype, out)
  else:
    summary, groups = profile_moco_step(args.variant, args.batch, args.image_size, args.superpixels, args.steps,
                                        args.dtype, out)
  total = summary['op_s_per_step'] or 1.0
  summary['phase_percent'] = {k: round(100 * v / total, 1) for k, v in groups['phase'].most_common()}
  print(json.dumps(summary), flush=True)
  for group in ('kind', 'source'):
    for key, seconds in groups[group].most_common(args.top):
      print(json.dumps({'group': group, group: key, 's_per_step': round(seconds, 4),
                        'percent': round(100 * seconds / total, 1)}), flush=True)
  return 0


if __name__ == '__main__':
  malloc_hugepages.reexec_with_hugepages('cast_jax.profile_step')  # README "Huge pages for XLA's buffers"
  sys.exit(main())
