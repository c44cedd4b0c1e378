"""Compiled programs reused: the persistent compilation cache and the fused finish program change no number."""

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from overparam import compile_cache, config_lib, engine, memory, planner, targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_dir_precedence(monkeypatch, tmp_path):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
  assert compile_cache.default_dir() == str(tmp_path / 'home' / '.cache' / 'overparam' / 'jax')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert compile_cache.default_dir() == str(tmp_path / 'xdg' / 'overparam' / 'jax')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'env'))
  assert compile_cache.default_dir() == str(tmp_path / 'env')


def test_is_on_follows_configure(tmp_path):
  was_on, before = compile_cache.is_on(), jax.config.jax_compilation_cache_dir
  try:
    assert compile_cache.configure(True, str(tmp_path / 'c')) == str(tmp_path / 'c')
    assert compile_cache.is_on()
    assert compile_cache.configure(False) is None
    assert not compile_cache.is_on()
  finally:
    compile_cache.configure(was_on, before or None)  # this process's setting, for the tests after


def test_release_free_heap_drops_compiled_programs_only_when_asked():
  f = jax.jit(lambda x: x * 2.0 + 1.0)
  f(np.ones(3))
  assert f._cache_size() == 1
  has_trim = hasattr(ctypes.CDLL(ctypes.util.find_library('c')), 'malloc_trim')  # glibc's
  assert memory.release_free_heap() == has_trim
  assert f._cache_size() == 1  # kept: the sweep drops compiled programs only with the persistent cache on
  memory.release_free_heap(clear_compiled=True)
  assert f._cache_size() == 0
  np.testing.assert_array_equal(f(np.ones(3)), 3.0)  # recompiled on next use


def _tiny(alg, **overrides):
  c = config_lib.base_config()
  c.algorithms, c.order, c.dims, c.rank, c.widths, c.num_seeds = (alg,), 3, (5,), 2, (4, 6), 1
  c.steps, c.chunk_steps, c.eps = 40, 20, 1e-9  # no early stop
  c.lazy.power_iters = 10
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.mark.parametrize('alg, overrides', [
    ('gd', dict(alpha=2.0)),                # export (the alpha model) + extras (linearization gap)
    ('beyond_lazy', {}),                    # export + extras
    ('lazy', dict(x64=True)),               # dense_model + extras
    ('lazy_exact', dict(x64=True)),         # dense_model + extras (tangent rank)
])
@pytest.mark.slow
def test_fused_finish_equals_separate_programs(alg, overrides):
  """finish (export, dense_model, extras in one XLA program) == each method jitted on its own, bit for bit
  (the planner's program: lazy_exact's is the grid path, one run per seed with every width)."""
  c = _tiny(alg, **overrides)
  (prog,) = planner.plan(c)  # widths 4 and 6: one bucket, or lazy_exact's one program
  runs = [(6, 0, 0)] if prog.one else [(4, 0, 0), (6, 0, 0)]
  algo = planner.run_algorithm(prog, runs)
  data = planner.run_data(prog, runs, {0: targets.make_target(c, 5, 0, None)})
  out = engine.run_program(algo, prog.task, data, runs, chunk_steps=config_lib.chunk_of(c))
  state = jax.tree.map(jax.numpy.asarray, out.state)
  task = prog.task
  separate = {name: jax.tree.map(np.asarray, jax.jit(jax.vmap(
      lambda a, s, d, name=name: getattr(a, name)(task, s, d)))(algo, state, data))
              for name in ('export', 'dense_model', 'extras')}
  fused = {'export': out.exported, 'dense_model': out.dense, 'extras': out.extras}
  assert separate['extras']  # every algorithm has extras
  assert (separate['export'] is None) != (separate['dense_model'] is None)  # a CP model or a dense one
  for name, want in separate.items():
    got = fused[name]
    assert jax.tree.structure(got) == jax.tree.structure(want), name
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(g, w, err_msg=name)


def _launch(workdir, cache_dir, *extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache_dir))
  proc = subprocess.run([sys.executable, 'launch.py', '--config=configs/default.py:quick', '--config.dims=(6,)',
                         f'--workdir={workdir}', *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {(r['algorithm'], r['width'], r['seed']): {k: v for k, v in r.items() if k != 'wall_s'} for r in rows}


def _entries(cache_dir):
  return sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []


@pytest.mark.slow
def test_relaunch_reads_the_cache_and_gives_identical_rows(tmp_path):
  """Launch 1 fills an empty cache; launch 2 (a fresh workdir) compiles nothing new (every program was
  a cache hit: a miss would add an entry) and writes the same rows, as does a launch with the cache off."""
  cache = tmp_path / 'cache'
  first = _launch(tmp_path / 'a', cache)
  filled = _entries(cache)
  assert len(filled) >= 3 * 3  # at least init, chunk and finish of each of the three programs
  second = _launch(tmp_path / 'b', cache)
  assert _entries(cache) == filled
  assert second == first
  off = _launch(tmp_path / 'c', tmp_path / 'cache_off', '--compilation_cache=false')
  assert not _entries(tmp_path / 'cache_off')
  assert off == first
