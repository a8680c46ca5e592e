"""cast_jax.malloc_hugepages: when the entry points restart with glibc's huge pages, and that the restart works."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from cast_jax import malloc_hugepages as mh
from conftest import REPO_ROOT

GLIBC = (2, 36)


@pytest.mark.parametrize('environ, glibc, thp, restart, why', [
    ({}, GLIBC, 'madvise', True, 'will ask'),
    ({mh.OPT_OUT: '1'}, GLIBC, 'madvise', True, 'will ask'),
    ({mh.OPT_OUT: '0'}, GLIBC, 'madvise', False, 'turns it off'),
    ({mh.OPT_OUT: 'off'}, GLIBC, 'madvise', False, 'turns it off'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=1:glibc.malloc.hugetlb=0'}, GLIBC, 'madvise', False, 'already'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=1'}, GLIBC, 'madvise', True, 'will ask'),
    ({}, None, 'madvise', False, 'not glibc'),
    ({}, (2, 34), 'madvise', False, 'not glibc >= 2.35'),
    ({}, GLIBC, 'always', False, "'always', not madvise"),
    ({}, GLIBC, 'never', False, "'never'"),
    ({}, GLIBC, None, False, 'None'),
])
def test_decision(environ, glibc, thp, restart, why):
  decided, reason = mh.decision(environ, glibc, thp)
  assert decided is restart
  assert why in reason


def test_an_unreadable_opt_out_value_says_what_to_write():
  with pytest.raises(ValueError, match=r"CAST_JAX_MALLOC_HUGEPAGES='maybe': write 1 .* or 0"):
    mh.decision({mh.OPT_OUT: 'maybe'}, GLIBC, 'madvise')


def test_the_tunable_is_added_to_what_glibc_tunables_held():
  assert mh.tunables_with_hugepages('') == 'glibc.malloc.hugetlb=1'
  assert mh.tunables_with_hugepages('glibc.malloc.arena_max=2') == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


def test_the_kernel_mode_is_the_bracketed_word(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert mh.transparent_hugepage_mode(str(path)) == 'madvise'
  path.write_text('[always] madvise never\n')
  assert mh.transparent_hugepage_mode(str(path)) == 'always'
  assert mh.transparent_hugepage_mode(str(tmp_path / 'absent')) is None


def _report(extra_env):
  env = {key: value for key, value in os.environ.items() if key not in ('GLIBC_TUNABLES', mh.OPT_OUT)}
  env.update(extra_env)
  done = subprocess.run([sys.executable, '-m', 'cast_jax.malloc_hugepages'], capture_output=True, text=True,
                        env=env, cwd=REPO_ROOT, check=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_restart_gives_malloc_huge_pages_where_it_applies():
  """Run the module's own entry point (which restarts itself as ``cast_jax.main`` does) and count page faults."""
  thp = mh.transparent_hugepage_mode()
  on, off = _report({}), _report({mh.OPT_OUT: '0'})
  assert off['glibc_tunables'] == ''
  assert off['faults_64_mib'] >= 16_000 or thp == 'always'  # 64 MiB in 4 KiB pages: 16,384 faults
  if on['applies']:
    assert on['glibc_tunables'] == 'glibc.malloc.hugetlb=1'
    assert on['faults_64_mib'] < 2_000  # 32 huge pages plus the block's unaligned ends in small ones
  else:  # this machine can't have them: nothing was set, and the reason is one of decision's
    assert on['glibc_tunables'] == ''
    assert on['why'] == mh.decision({}, mh.glibc_version(), thp)[1]


JAX_PROGRAM = r'''
import hashlib, jax, jax.numpy as jnp
x = jax.random.normal(jax.random.PRNGKey(0), (64, 196, 384))
w = jax.random.normal(jax.random.PRNGKey(1), (384, 1536)) / 20
@jax.jit
def f(x, w):
  h = jax.nn.gelu(x @ w) @ w.T
  a = jax.nn.softmax(jnp.einsum('bqd,bkd->bqk', h, x) / 20, axis=-1)
  return jnp.einsum('bqk,bkd->bqd', a, h).sum(0)
print(hashlib.sha256(jax.device_get(jax.grad(lambda x: f(x, w).sum())(x)).tobytes()).hexdigest())
'''


def test_huge_pages_do_not_change_results():
  """Where memory comes from must not change a bit: the same jitted program with and without the tunable."""
  hashes = []
  for tunables in ('', 'glibc.malloc.hugetlb=1'):
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    done = subprocess.run([sys.executable, '-c', JAX_PROGRAM], capture_output=True, text=True, env=env, check=True)
    hashes.append(done.stdout.strip())
  assert len(hashes[0]) == len(hashlib.sha256().hexdigest())
  assert hashes[0] == hashes[1]


def test_the_benchmark_command_restarts_with_them_and_records_it():
  env = {key: value for key, value in os.environ.items() if key not in ('GLIBC_TUNABLES', mh.OPT_OUT)}
  done = subprocess.run([sys.executable, '-m', 'cast_jax.benchmark', '--only', 'matmul', '--repeats', '1'],
                        capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True)
  row = json.loads(done.stdout.strip().splitlines()[-1])
  applies = mh.decision(env, mh.glibc_version(), mh.transparent_hugepage_mode())[0]
  assert row['name'] == 'matmul'
  assert row['glibc_tunables'] == ('glibc.malloc.hugetlb=1' if applies else '')
