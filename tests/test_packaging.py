"""pyproject.toml: the console commands resolve to working entry points, the accelerator extras to jax's own."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())
SCRIPTS = PYPROJECT['project']['scripts']
# Command -> (a flag its help must list, whether it is an absl app: absl prints help with exit status 1).
EXPECTED = {'cast-train': ('--workdir', True), 'cast-evaluate': ('--checkpoint', True),
            'cast-convert': ('--num-clusters', False), 'cast-segment': ('--superpixels', False)}


def test_every_command_has_an_entry_point():
  assert set(EXPECTED) <= set(SCRIPTS), f'missing console scripts: {sorted(set(EXPECTED) - set(SCRIPTS))}'
  for command, target in SCRIPTS.items():
    module, _, name = target.partition(':')
    # Found here, imported in its own process below (the absl apps define flags of the same names).
    assert importlib.util.find_spec(module) is not None and name, f'{command} -> {target}: no such module'


@pytest.mark.parametrize('command', sorted(EXPECTED))
def test_entry_point_runs_as_the_installed_script_would(command):
  """A console script calls ``sys.exit(function())`` with the command line in sys.argv."""
  module, _, name = SCRIPTS[command].partition(':')
  flag, is_absl = EXPECTED[command]
  help_flag = '--helpfull' if is_absl else '--help'
  code = (f'import sys; from {module} import {name}; assert callable({name}); '
          f'sys.argv = [{command!r}, {help_flag!r}]; sys.exit({name}())')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == (1 if is_absl else 0), proc.stderr[-2000:]
  assert flag in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]


def test_accelerator_extras_are_jaxs_own_plugins():
  extras = PYPROJECT['project']['optional-dependencies']
  assert extras['cuda12'] == ['jax[cuda12]'] and extras['tpu'] == ['jax[tpu]']
  provided = set(importlib.metadata.metadata('jax').get_all('Provides-Extra') or [])
  for requirement in (r for name, reqs in extras.items() if name != 'test' for r in reqs):
    extra = requirement.split('[', 1)[1].rstrip(']')
    assert extra in provided, f'{requirement}: the installed jax offers no extra {extra!r} (it has {sorted(provided)})'
