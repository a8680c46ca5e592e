r"""Plot logged metrics of run folders against training step, as a PNG drawn with PIL (no matplotlib needed).

    python -m cast_jax.plot_curves --run cast=/tmp/cast_long --run vit=/tmp/vit_long \
        --metric knn/top1 --out docs/demo_long_curve.png --title "kNN top-1 on PartWorld"

Every ``--run NAME=FOLDER`` contributes one line per ``--metric`` (read from FOLDER/metrics.jsonl, the same file
the trainer writes; a resumed run's repeated steps keep the last value). The picture has axes with ticks, a
legend and, optionally, a dashed horizontal reference line (``--reference 12.5`` for chance).

``--x progress`` puts each run's steps on a 0-1 axis (step / the last step the run logged), to compare runs given
equal budgets of another kind, e.g. equal CPU time with steps of different cost (``configs/demo_long.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinguishable line colours (the first ones go to the first runs).
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))


def read_curve(folder, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of ``metric`` in folder/metrics.jsonl, sorted by step; a repeated step keeps its last value."""
  path = pathlib.Path(folder) / 'metrics.jsonl'
  if not path.is_file():
    raise FileNotFoundError(f'{path} does not exist: pass a run folder written by python -m cast_jax.main')
  points = {}
  for line in path.read_text().splitlines():
    if line.strip():
      record = json.loads(line)
      if metric in record:
        points[int(record['step'])] = float(record[metric])
  if not points:
    raise ValueError(f'{path} has no {metric!r}; its metrics are listed in each line of the file')
  steps = np.array(sorted(points))
  return steps, np.array([points[s] for s in steps])


def last_step(folder) -> int:
  """The largest step of any record in folder/metrics.jsonl (the end of a finished run)."""
  path = pathlib.Path(folder) / 'metrics.jsonl'
  return max(int(json.loads(line)['step']) for line in path.read_text().splitlines() if line.strip())


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
  """About ``count`` round tick values covering [low, high]."""
  span = max(high - low, 1e-9)
  raw = span / count
  magnitude = 10 ** math.floor(math.log10(raw))
  step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=10 * magnitude)
  first = math.ceil(low / step) * step
  return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
  return f'{value:g}' if abs(value) < 1e5 else f'{value:.0e}'


def plot(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str = '', y_label: str = '',
         reference: float | None = None, size: tuple[int, int] = (720, 440), x_label: str = 'step') -> np.ndarray:
  """curves: (legend name, x (N,), values (N,)) each, x being steps unless ``x_label`` says otherwise. Returns an
  (H, W, 3) uint8 picture."""
  if not curves:
    raise ValueError('nothing to plot: give at least one run and metric')
  width, height = size
  left, right, top, bottom = 64, 20, 36, 48
  all_x = np.concatenate([c[1] for c in curves])
  all_y = np.concatenate([c[2] for c in curves] + ([np.array([reference])] if reference is not None else []))
  x0, x1 = 0.0, float(all_x.max()) or 1.0
  pad = 0.05 * max(float(all_y.max() - all_y.min()), 1e-6)
  y0, y1 = float(all_y.min()) - pad, float(all_y.max()) + pad
  to_px = lambda x, y: (left + (x - x0) / (x1 - x0) * (width - left - right),
                        top + (y1 - y) / (y1 - y0) * (height - top - bottom))
  img = Image.new('RGB', size, (255, 255, 255))
  draw = ImageDraw.Draw(img)
  font = ImageFont.load_default()
  for y in _nice_ticks(y0, y1):  # horizontal grid and y ticks
    _, py = to_px(x0, y)
    draw.line([(left, py), (width - right, py)], fill=(225, 225, 225))
    draw.text((4, py - 6), _label(y), fill=(0, 0, 0), font=font)
  for x in _nice_ticks(x0, x1):
    px, _ = to_px(x, y0)
    draw.line([(px, height - bottom), (px, height - bottom + 4)], fill=(0, 0, 0))
    draw.text((px - 10, height - bottom + 8), _label(x), fill=(0, 0, 0), font=font)
  draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
  if reference is not None:  # dashed
    _, py = to_px(x0, reference)
    for px in range(left, width - right, 12):
      draw.line([(px, py), (min(px + 6, width - right), py)], fill=(120, 120, 120))
  for i, (name, steps, values) in enumerate(curves):
    colour = COLOURS[i % len(COLOURS)]
    points = [to_px(x, y) for x, y in zip(steps, values)]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for px, py in points:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    ly = top + 8 + 14 * i  # legend, top left inside the axes
    draw.line([(left + 8, ly + 6), (left + 28, ly + 6)], fill=colour, width=3)
    draw.text((left + 34, ly), name, fill=(0, 0, 0), font=font)
  draw.text((left, 10), title, fill=(0, 0, 0), font=font)
  draw.text((width // 2 - 3 * len(x_label), height - 18), x_label, fill=(0, 0, 0), font=font)
  if y_label:
    draw.text((left + 4, top - 14), y_label, fill=(80, 80, 80), font=font)
  return np.asarray(img)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--run', action='append', required=True, help='NAME=RUN_FOLDER (repeatable)')
  parser.add_argument('--metric', action='append', required=True, help='a key of metrics.jsonl (repeatable)')
  parser.add_argument('--out', required=True, help='the PNG to write')
  parser.add_argument('--title', default='')
  parser.add_argument('--reference', type=float, default=None, help='a dashed horizontal line, e.g. chance')
  parser.add_argument('--x', default='step', choices=('step', 'progress'),
                      help='step, or progress: step / the run\'s last step (runs with equal budgets of another kind)')
  args = parser.parse_args(argv)
  curves = []
  for run in args.run:
    name, sep, folder = run.partition('=')
    if not sep:
      raise SystemExit(f'--run {run!r}: write NAME=RUN_FOLDER, e.g. --run cast=/tmp/cast_demo')
    for metric in args.metric:
      label = name if len(args.metric) == 1 else f'{name} {metric}'
      steps, values = read_curve(folder, metric)
      if args.x == 'progress':
        steps = steps / max(last_step(folder), 1)
      curves.append((label, steps, values))
  x_label = 'step' if args.x == 'step' else "share of the run's training (its last step = 1)"
  picture = plot(curves, title=args.title, y_label=args.metric[0] if len(args.metric) == 1 else '',
                 reference=args.reference, x_label=x_label)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(picture).save(out)
  print(f'wrote {out} ({len(curves)} curves)')


if __name__ == '__main__':
  main()
