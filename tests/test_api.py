"""The Python API (overparam.decompose, overparam.run) against independent numpy and the launcher."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import overparam
from overparam.errors import ArgumentError, ConfigError, TargetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def planted(dim=5, order=3):
  """A rank-2 CP tensor: unequal weights, random unit directions (numpy, float64)."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, dim))
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  return np.array([1.0, 0.6]), a


def dense(coeffs, factors, order):
  """sum_j c_j a_j^{(x)order} by einsum (independent of the library's Khatri-Rao GEMM)."""
  letters = 'ijklmn'[:order]
  spec = ','.join(['r'] + [f'r{x}' for x in letters]) + '->' + letters
  return np.einsum(spec, coeffs, *[factors] * order)


def numpy_rel_error(res, t_star, order):
  t = dense(res.coeffs.astype(np.float64), res.factors.astype(np.float64), order)
  return np.linalg.norm(t - t_star) / np.linalg.norm(t_star)


def test_decompose_dense_planted_rank_2():
  c, a = planted()
  t_star = dense(c, a, 3)
  res = overparam.decompose(t_star, 4, eps=1e-3, x64=True)
  assert res.status == 'converged' and res.rel_error < 1e-3
  assert isinstance(res.rel_error, float)
  assert res.coeffs.shape == (4,) and res.factors.shape == (4, 5) and res.factors.dtype == np.float64
  np.testing.assert_allclose(res.rel_error, numpy_rel_error(res, t_star, 3), rtol=1e-9)
  assert res.algorithm == 'beyond_lazy' and res.width == 4 and res.order == 3 and res.seed == 0
  assert res.steps > 0 and res.extras['epochs'] >= 0
  # the same numbers as overparam.fit from the documented key
  fit = overparam.fit(overparam.beyond_lazy(), jax.random.PRNGKey(0), t_star, width=4, eps=1e-3)
  np.testing.assert_allclose(res.factors, fit.factors, rtol=1e-12)
  assert res.steps == int(fit.steps)


def test_decompose_lazy_exact_has_no_cp_export():
  """The lazy model T(W0) + J dW is not a CP tensor: no coeffs/factors, the dense model instead. At
  d = 5, m = 8 > C(7,3)/5 the tangent space spans all 35 symmetric directions: an exact fit."""
  t_star = dense(*planted(), 3)
  res = overparam.decompose(t_star, 8, algorithm='lazy_exact', x64=True, eps=1e-8)
  assert res.coeffs is None and res.factors is None and res.model.shape == (5, 5, 5)
  assert res.status == 'converged' and res.rel_error < 1e-8
  assert res.extras['tangent_rank'] == res.extras['sym_dim'] == 35
  np.testing.assert_allclose(res.model, t_star, atol=1e-9)


def test_decompose_cp_pair_never_dense_and_matches_numpy():
  c, a = planted()
  t_star = dense(c, 2.0 * a, 3)
  for given in ((c, 2.0 * a), overparam.CPTensor(c, 2.0 * a, 3)):  # unnormalized factors
    res = overparam.decompose(given, 4, order=3, eps=1e-3, x64=True)
    assert res.status == 'converged' and res.rel_error < 1e-3
    np.testing.assert_allclose(res.rel_error, numpy_rel_error(res, t_star, 3), rtol=1e-7)
    assert res.target.dense is None and res.extras['recovered_fraction'] == 1.0  # factored: implicit loss


def test_decompose_float32_and_hyperparameter_spellings():
  c, a = planted()
  t_star = dense(c, a, 3)
  r0 = overparam.decompose(t_star, 4, eps=0.02, lr=0.1, reinit_threshold=0.02, x64=False)
  r1 = overparam.decompose(t_star, 4, eps=0.02, beyond_lazy={'lr': 0.1, 'reinit_threshold': 0.02}, x64=False)
  r2 = overparam.decompose(t_star, 4, eps=0.02, x64=False,
                           **{'beyond_lazy.lr': 0.1, 'beyond_lazy.reinit_threshold': 0.02})
  assert r1.factors.dtype == np.float32 and float(r1.hyperparameters.lr) == 0.1
  assert float(r1.hyperparameters.reinit_threshold) == 0.02 and r1.hyperparameters.epoch_length == 100
  np.testing.assert_array_equal(r0.factors, r1.factors)
  np.testing.assert_array_equal(r1.factors, r2.factors)
  assert r1.rel_error == r2.rel_error < 0.02
  # float64 evaluation against the float32-rounded T* the run was given
  np.testing.assert_allclose(r1.rel_error, numpy_rel_error(r1, t_star, 3), atol=1e-6)


def test_optimizer_kwargs_override():
  """A *_kwargs dict is replaced whole (its keys are optax's); a dotted key adds one; optax's
  signature still decides which keys are valid."""
  t = dense(*planted(), 3)
  r = overparam.decompose(t, 3, algorithm='gd', optimizer='adam', optimizer_kwargs={'b1': 0.8}, steps=30)
  assert dict(r.hyperparameters.optimizer.kwargs) == {'b1': 0.8} and r.steps == 30
  r = overparam.decompose(t, 3, algorithm='gd', optimizer='adam', steps=30, **{'optimizer_kwargs.b2': 0.99})
  assert dict(r.hyperparameters.optimizer.kwargs) == {'b2': 0.99}
  with pytest.raises(ConfigError, match='optimizer_kwargs.nope'):
    overparam.decompose(t, 3, algorithm='gd', optimizer_kwargs={'nope': 1})


def test_algorithm_values_are_reused_but_arguments_still_checked():
  t = dense(*planted(), 3)
  a = overparam.decompose(t, 3, steps=5, lr=1)
  assert overparam.decompose(t, 3, steps=5, lr=1).hyperparameters is a.hyperparameters  # built once
  assert overparam.decompose(t, 3, steps=5, lr=1.0).hyperparameters is not a.hyperparameters  # 1.0 is not 1
  with pytest.raises(ArgumentError, match='lr'):
    overparam.decompose(t, 3, steps=5, lr=True)  # equal to 1 as a key, refused as an argument


def test_restarts_keep_the_best_and_batches_are_one_program():
  c, a = planted()
  t_star = dense(c, a, 3)
  runs = [overparam.decompose(t_star, 2, seed=s, eps=1e-6, steps=300, x64=True) for s in range(3)]
  best = overparam.decompose(t_star, 2, seed=0, restarts=3, eps=1e-6, steps=300, x64=True)
  errs = [r.rel_error for r in runs]
  assert best.rel_error == min(errs) and best.seed == int(np.argmin(errs))
  stack = np.stack([t_star, 2.0 * t_star, dense(np.array([0.5, 1.0]), a, 3)])
  many = overparam.decompose_many(stack, 3, eps=1e-3, x64=True)
  for t, m in zip(stack, many):
    one = overparam.decompose(t, 3, eps=1e-3, x64=True)
    np.testing.assert_allclose(m.factors, one.factors, rtol=1e-10, atol=1e-13)
    assert m.status == one.status and m.steps == one.steps
  # a stacked float array is checked in one pass: the same numbers as the per-tensor checks (lists)
  listed = overparam.decompose_many([t.tolist() for t in stack], 3, eps=1e-3, x64=True)
  for m, l in zip(many, listed):
    np.testing.assert_array_equal(m.factors, l.factors)
    np.testing.assert_array_equal(m.target.dense, l.target.dense)
    assert m.rel_error == l.rel_error and m.status == l.status and m.steps == l.steps
  # a nearly symmetric tensor in a stack is projected as decompose projects it alone
  rng = np.random.default_rng(1)
  near = np.stack([t_star, t_star + 1e-9 * rng.normal(size=t_star.shape)])
  got = overparam.decompose_many(near, 3, eps=1e-3, x64=True)
  alone = overparam.decompose(near[1], 3, eps=1e-3, x64=True)
  np.testing.assert_array_equal(got[1].target.dense, alone.target.dense)
  assert not np.array_equal(got[1].target.dense, near[1])
  with pytest.raises(TargetError, match='one shape'):
    overparam.decompose_many([t_star, np.ones((4, 4, 4))], 3)
  with pytest.raises(TargetError, match='tensor 1 has 1 non-finite'):
    overparam.decompose_many(np.stack([t_star, np.where(t_star == t_star.max(), np.inf, t_star)]), 3)
  with pytest.raises(TargetError, match='tensor 1 is not symmetric'):
    overparam.decompose_many([t_star, np.arange(125.0).reshape(5, 5, 5)], 3)


@pytest.mark.parametrize('call, error, words', [
    (lambda t: overparam.decompose(np.ones(5), 3), TargetError, 'tensor'),                     # ndim 1
    (lambda t: overparam.decompose(t, 3, order=4), TargetError, 'order'),                      # ndim != order
    (lambda t: overparam.decompose(np.ones((5, 4, 5)), 3), TargetError, 'shape'),             # not (d,)*l
    (lambda t: overparam.decompose(t + np.arange(5.0)[:, None, None] * 0.01, 3), TargetError, 'not symmetric'),
    (lambda t: overparam.decompose(np.where(t > 0.1, np.nan, t), 3), TargetError, 'non-finite'),
    (lambda t: overparam.decompose(t, 0), ArgumentError, 'width'),
    (lambda t: overparam.decompose(t, 3, algorithm='als'), ConfigError, 'algorithm must be one of'),
    (lambda t: overparam.decompose(t, 3, stepz=10), ConfigError, "'stepz' for algorithm beyond_lazy (did you mean 'steps'?)"),
    (lambda t: overparam.decompose(t, 3, beyond_lazy={'lrr': 0.1}), ConfigError, 'beyond_lazy.lrr'),
    (lambda t: overparam.decompose(t, 3, **{'lazy.nope': 1}), ConfigError, 'lazy.nope'),
    (lambda t: overparam.decompose(t, 3, steps=0.5), ArgumentError, 'steps must be an integer'),
    (lambda t: overparam.decompose(t, 3, eps=-1.0), ArgumentError, 'eps must be a finite number > 0'),
    (lambda t: overparam.decompose(t, 3, lr=-1.0), ArgumentError, 'lr must be a finite number > 0'),
    (lambda t: overparam.decompose(t, 3, restarts=0), ArgumentError, 'restarts must be an integer >= 1'),
    (lambda t: overparam.decompose(planted(), 3), ArgumentError, 'order must be given'),
    (lambda t: overparam.decompose((np.ones(2), np.ones((3, 5))), 3, order=3), TargetError, 'must have shape (r,)'),
    (lambda t: overparam.decompose((np.ones(2), np.zeros((2, 5))), 3, order=3), TargetError, 'zero rows'),
    (lambda t: overparam.decompose([[1.0, 2.0], [3.0, 4.0]], 3), TargetError, 'not symmetric'),  # a matrix, not a pair
    (lambda t: overparam.decompose(np.ones((3, 3, 3), np.float16), 3), TargetError, 'got float16'),
], ids=['ndim1', 'order', 'shape', 'asymmetric', 'nan', 'width0', 'algorithm', 'unknown', 'nested_unknown',
        'dotted_unknown', 'type', 'range', 'hyperparameter', 'restarts', 'cp_order', 'cp_shapes', 'cp_zero',
        'nested_list', 'float16'])
def test_bad_input_raises_the_user_error(call, error, words):
  t = dense(*planted(), 3)
  with pytest.raises(error) as e:
    call(t)
  assert words in str(e.value), str(e.value)
  assert '\n' not in str(e.value)


def test_load_config_errors():
  with pytest.raises(ConfigError, match='no such config file'):
    overparam.load_config('configs/nope.py')
  with pytest.raises(ConfigError, match='unknown variant'):
    overparam.load_config(os.path.join(ROOT, 'configs/default.py:huge'))
  with pytest.raises(ConfigError, match='ConfigDict'):
    overparam.run({'order': 3}, '/tmp/unused')


@pytest.mark.parametrize('name', ['default', 'beyond_lazy', 'local_minima'])
def test_quick_variants_validate_and_are_small(name):
  from overparam import config_lib  # noqa: PLC0415

  def cells(c):
    return sum(len(config_lib.widths_of(c, a)) * len(c.dims) * len(config_lib.ranks_of(c)) * c.num_seeds * c.steps
               for a in c.algorithms)

  full = overparam.load_config(os.path.join(ROOT, f'configs/{name}.py'))
  quick = overparam.load_config(os.path.join(ROOT, f'configs/{name}.py:quick'))
  config_lib.validate(quick)
  assert quick.algorithms == full.algorithms and quick.order == full.order
  assert cells(quick) * 10 <= cells(full)  # run-steps: at least 10x less work


@pytest.mark.slow
def test_run_equals_the_launcher(tmp_path):
  """overparam.run(config, workdir) writes the rows and summary launch.py writes for the same config."""
  spec = os.path.join(ROOT, 'configs/default.py:quick')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, 'launch.py', '--config=configs/default.py:quick', '--config.dims=(6,)',
                         f'--workdir={tmp_path / "cli"}'], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  c = overparam.load_config(spec)
  c.dims = (6,)  # every arm of the main job, at its smallest d
  summary = overparam.run(c, str(tmp_path / 'api'))

  def rows(wd):
    with open(os.path.join(wd, 'results.jsonl')) as f:
      return {(r['algorithm'], r['dim'], r['width'], r['seed']): {k: v for k, v in r.items() if k != 'wall_s'}
              for r in map(json.loads, f)}

  assert rows(tmp_path / 'api') == rows(tmp_path / 'cli')
  with open(tmp_path / 'cli' / 'summary.json') as f:
    assert json.loads(json.dumps(summary)) == json.load(f)
  assert sorted(os.listdir(tmp_path / 'api' / 'figures')) == sorted(os.listdir(tmp_path / 'cli' / 'figures'))


@pytest.mark.slow
def test_x64_is_switched_on_when_asked(tmp_path):
  """In a fresh process (the test session already runs with x64): x64=False gives float32 factors,
  x64=True turns jax_enable_x64 on and gives float64."""
  code = ('import numpy as np, jax, overparam\n'
          'a = np.eye(2, 4); t = np.einsum("ri,rj,rk->ijk", a, a, a)\n'
          'r32 = overparam.decompose(t, 2, steps=50)\n'
          'assert not jax.config.jax_enable_x64 and r32.factors.dtype == np.float32, r32.factors.dtype\n'
          'r64 = overparam.decompose(t, 2, steps=50, x64=True)\n'
          'assert jax.config.jax_enable_x64 and r64.factors.dtype == np.float64, r64.factors.dtype\n'
          'print("ok")\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-3000:]


def test_import_is_light():
  """`import overparam` loads the functional core (jax, optax) but neither matplotlib nor the workdir
  engine; run() loads them on first use."""
  code = ('import sys, overparam; heavy = [m for m in ("matplotlib", "overparam.engine", "overparam.experiments") '
          'if m in sys.modules]; assert not heavy, heavy; overparam.run; '
          'assert "overparam.experiments" in sys.modules; print("ok")')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-2000:]


def _noisy(seed=3, d=10, weights=(1.0, 0.8, 0.6, 0.5), noise=0.03):
  import itertools  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(len(weights), d))
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  t = dense(np.asarray(weights), a, 3)
  n = rng.normal(size=t.shape)
  n = sum(n.transpose(p) for p in itertools.permutations(range(3))) / 6
  return t + noise * np.linalg.norm(t) / np.linalg.norm(n) * n


@pytest.mark.slow
def test_reduce_with_default_options_gives_the_rank_of_a_noisy_tensor():
  """The wide fit stops at eps carrying duplicated and tiny components; reduce() turns it into the
  rank-4 answer, a stationary point whose residual is the noise floor (below the wide fit's)."""
  t = _noisy()
  wide = overparam.decompose(t, 12)
  red = wide.reduce()
  assert red.width == 4 and red.coeffs.shape == (4,) and red.factors.shape == (4, 10)
  np.testing.assert_allclose(np.linalg.norm(red.factors, axis=1), 1.0, rtol=1e-12)
  assert red.rel_error < 0.035 and red.extras['refine'] == 'converged' and red.extras['rule'] in ('fit', 'noise')
  np.testing.assert_allclose(red.rel_error, numpy_rel_error(red, t, 3), rtol=1e-9)
  forced = wide.reduce(rank=3)
  assert forced.width == 3 and forced.rel_error > red.rel_error
  with pytest.raises(ConfigError, match=r'rank must be None or an integer in \[1, 12\] \(at most the width m=12'):
    wide.reduce(rank=13)
  with pytest.raises(ConfigError, match='not a CP tensor'):
    overparam.decompose(t, 30, algorithm='lazy_exact', x64=True).reduce()
  many = overparam.decompose_many(np.stack([t, _noisy(seed=4)]), 12)
  assert [m.reduce().width for m in many] == [4, 4]


@pytest.mark.slow
def test_run_from_two_threads(tmp_path):
  """overparam.run is thread-safe (registry and cache settings under locks, figures without pyplot):
  two threads into two workdirs both finish with the rows of a sequential run; two into one workdir:
  one of them is refused by the workdir's lock."""
  import threading  # noqa: PLC0415
  from tests.support import load_rows, tiny_config  # noqa: PLC0415
  c = tiny_config(steps=60)
  errors, done = [], []

  def go(wd):
    try:
      done.append(overparam.run(c, wd))
    except Exception as e:  # noqa: BLE001 - collected for the assertion
      errors.append(e)

  threads = [threading.Thread(target=go, args=(str(tmp_path / f'w{i}'),)) for i in range(2)]
  for th in threads:
    th.start()
  for th in threads:
    th.join(300)
  assert not errors and len(done) == 2, errors
  key = lambda rs: sorted((r['width'], r['seed'], r['rel_error'], r['steps']) for r in rs)
  assert key(load_rows(str(tmp_path / 'w0'))) == key(load_rows(str(tmp_path / 'w1')))
  assert sorted(os.listdir(tmp_path / 'w0' / 'figures')) == sorted(os.listdir(tmp_path / 'w1' / 'figures'))
  errors.clear()
  same = [threading.Thread(target=go, args=(str(tmp_path / 'same'),)) for _ in range(2)]
  for th in same:
    th.start()
  for th in same:
    th.join(300)
  assert all('in use by another launch' in str(e) for e in errors) and len(errors) <= 1


def _readme_block(after: str) -> str:
  """The first indented code block of README.md after the line starting with `after`, dedented."""
  lines = open(os.path.join(ROOT, 'README.md')).read().splitlines()
  i = next(k for k, l in enumerate(lines) if l.startswith(after))
  while not lines[i].startswith('    '):
    i += 1
  block = []
  while i < len(lines) and (lines[i].startswith('    ') or not lines[i].strip()):
    block.append(lines[i][4:])
    i += 1
  return '\n'.join(block)


@pytest.mark.slow
def test_readme_examples_print_what_readme_says(tmp_path):
  """The README's first example (fit, vmaps) and its decompose example, run in a fresh process
  (float32 by default), print exactly what README states."""
  fit_code = _readme_block('## Python API: the functional core')
  dec_code = _readme_block('## Decompose a tensor')
  claimed_fit = re.search(r"# (converged .*?) \(float32\)", fit_code).group(1)
  readme = open(os.path.join(ROOT, 'README.md')).read()
  claimed_dec = re.search(r'prints `(converged 71 .*?)`', readme).group(1)
  script = fit_code + '\nprint("---")\n' + dec_code
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  p = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  first, second = p.stdout.split('---\n')
  assert first.splitlines()[0] == claimed_fit
  assert second.strip() == claimed_dec
