"""The beyond-lazy algorithm: recovery, re-initialization, determinism, dense == implicit, units."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import overparam
from overparam import config_lib, core, engine, experiments, metrics, objectives, targets, tensors
from overparam.beyond_lazy_gd import epoch_length_of
from overparam.errors import ConfigError

F64 = jnp.float64


def make_alg(**kw):
  base = dict(lr=0.2, init_scale=1e-3, reinit_threshold=1e-2, epoch_length=100, epoch_growth=1.5, reg=1e-4)
  base.update(kw)
  return overparam.beyond_lazy(**base)


def make_target(order, dim, rank, kind='random_unit', seed=0, weights=(), **kw):
  return tensors.make_target(targets.seed_keys(seed)[0], kind, order, dim, rank, weights=weights, dtype=F64, **kw)


def run_data(target, order, width, bucket, seed=0, loss='implicit', eps=1e-3):
  """One run's RunData (unbatched), keys as the engine derives them from the seed."""
  _, init_key, reinit_key = targets.seed_keys(seed)
  sq = tensors.target_sq_norm(target, order)
  if loss == 'dense' and target.dense is None:
    target = target._replace(dense=tensors.dense_cp(target.coeffs, target.factors, order))
  return core.RunData(init_key=init_key, reinit_key=reinit_key, mask=(jnp.arange(bucket) < width).astype(F64),
                      width=jnp.asarray(width, F64), target=target, target_sq=sq, stop_eps=jnp.asarray(eps, F64))


def stack(datas):
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *datas)


def run_engine(alg, task, datas, chunk_steps=100, trace_every=0):
  cells = [(int(d.width), i, 0) for i, d in enumerate(datas)]
  return engine.run_program(core.stack_leaves([alg] * len(datas), np.float64), task, stack(datas), cells,
                            chunk_steps=chunk_steps, trace_every=trace_every)


def exported(out, i, width):
  c, v = out.exported
  return c[i][:width], v[i][:width]


# ---------------------------------------------------------------- recovery (one program per order)

RECOVERY_CASES = [(kind, seed, {}) for kind in ('orthonormal', 'random_unit') for seed in (0, 1)] + [
    ('coherent', 2, dict(coherence=0.3)),                                   # pairwise cos 0.3
    ('orthonormal', 3, dict(weights=(1.0, 0.5, 0.25))),                     # unequal weights
    ('coherent', 4, dict(coherence=0.3, weights=(1.0, 0.6, 0.3)))]


@pytest.fixture(scope='module', params=[3, 4])
def recovery(request):
  """Every case in one vmapped overparam.fit (keys and targets batched), width 8."""
  order = request.param
  ts = [make_target(order, 6, 3, kind, seed, **kw) for kind, seed, kw in RECOVERY_CASES]
  keys = jnp.stack([jax.random.PRNGKey(seed) for _, seed, _ in RECOVERY_CASES])
  cs, fs = jnp.stack([t.coeffs for t in ts]), jnp.stack([t.factors for t in ts])
  alg = make_alg()
  out = jax.vmap(lambda k, c, f: overparam.fit(alg, k, overparam.CPTensor(c, f, order), width=8, steps=3000,
                                               eps=1e-3))(keys, cs, fs)
  return order, ts, out


@pytest.mark.slow
def test_recovers_small_targets_to_1e3(recovery):
  order, ts, out = recovery
  for i, t in enumerate(ts):
    assert core.STATUS_NAMES[int(out.status[i])] == 'converged', RECOVERY_CASES[i]
    c, v = out.coeffs[i], out.factors[i]
    assert objectives.rel_error_f64(c, v, t, order) < 1e-3, RECOVERY_CASES[i]
    rec = metrics.recovery(c, v, t.coeffs, t.factors, order)
    assert rec['recovered_fraction'] == 1.0, (RECOVERY_CASES[i], rec)
    if RECOVERY_CASES[i][0] == 'orthonormal':  # (correlated a_j: near-duplicates may still be merging)
      np.testing.assert_allclose(rec['aligned_weight'], np.asarray(t.coeffs), atol=2e-3 * np.linalg.norm(t.coeffs))


# ---------------------------------------------------------------- re-initialization

TASK = core.Task(order=3, loss='implicit', steps=3000)


def _small_problem(bucket=6, width=4, dim=5, **kw):
  alg = make_alg(epoch_length=3, epoch_growth=2.0, **kw)
  data = run_data(make_target(3, dim, 2, seed=3), 3, width, bucket, seed=3, eps=1e-12)
  return alg, data


def _set_norms(state, norms):
  w = state.params['factors']
  w = w / jnp.linalg.norm(w, axis=1, keepdims=True) * jnp.asarray(norms, w.dtype)[:, None]
  return state._replace(params={**state.params, 'factors': w})


@pytest.mark.slow
@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_reinit_redraws_exactly_the_small_real_components(optimizer):
  # bucket 6 > epoch_length 3: the next epoch's directions are drawn 2 rows per step.
  alg, data = _small_problem(optimizer=optimizer)
  assert alg.rows_per_step(6) == 2
  step = jax.jit(lambda s, d: alg.step(TASK, s, d))
  reinit = jax.jit(lambda s, d: alg.reinitialize(TASK, s, d))
  state = jax.jit(lambda d: alg.init(TASK, d))(data)
  # components 0, 2 real and small; 1, 3 real and large; 4 padding and small; 5 padding and large
  norms = [1e-3, 0.5, 5e-3, 0.02, 1e-3, 0.5]
  thr_small = np.array([True, False, True, False, False, False])
  for epoch, boundary in ((1, 3), (2, 9)):  # epoch lengths 3, 6, 12
    while int(state.step) < boundary:
      state = step(state, data)
    state = _set_norms(state, norms)
    before = jax.tree.map(np.asarray, state)
    after = jax.tree.map(np.asarray, reinit(state, data))
    fresh = np.asarray(objectives.init_params(jax.random.fold_in(data.reinit_key, epoch), 'homogeneous',
                                              6, 5, alg.init_scale, F64)['factors'])
    w0, w1 = before.params['factors'], after.params['factors']
    np.testing.assert_allclose(w1[thr_small], fresh[thr_small], rtol=1e-14, atol=1e-20)
    np.testing.assert_array_equal(w1[~thr_small], w0[~thr_small])
    np.testing.assert_allclose(np.linalg.norm(w1[thr_small], axis=1), alg.init_scale, rtol=1e-12)
    assert int(after.aux.epoch) == epoch
    assert int(after.aux.boundary) == boundary + 3 * 2 ** epoch
    assert int(after.aux.reinits) == int(before.aux.reinits) + 2
    if optimizer == 'adam':  # moments restart with a re-drawn component, the others keep theirs
      for m0, m1 in ((before.opt_state[0].mu, after.opt_state[0].mu), (before.opt_state[0].nu, after.opt_state[0].nu)):
        m0, m1 = m0['factors'], m1['factors']
        assert np.all(m0[thr_small] != 0)
        np.testing.assert_array_equal(m1[thr_small], 0.0)
        np.testing.assert_array_equal(m1[~thr_small], m0[~thr_small])
    # off a boundary nothing happens
    off = jax.tree.map(np.asarray, reinit(state._replace(step=state.step + 1), data))
    np.testing.assert_array_equal(off.params['factors'], w0)
    assert int(off.aux.epoch) == epoch - 1
    state = jax.tree.map(jnp.asarray, after)  # run on to the next boundary


def test_reinit_frozen_when_converged_or_out_of_budget():
  alg, data = _small_problem()
  state = jax.jit(lambda d: alg.init(TASK, d))(data)
  state = _set_norms(state._replace(step=state.aux.boundary), [1e-3] * 6)
  converged = state._replace(status=jnp.asarray(core.CONVERGED, jnp.int32))
  budget = core.Task(order=3, loss='implicit', steps=int(state.step))
  for task, s in ((TASK, converged), (budget, state)):
    out = alg.reinitialize(task, s, data)
    np.testing.assert_array_equal(np.asarray(out.params['factors']), np.asarray(state.params['factors']))
    assert int(out.aux.epoch) == 0 and int(out.aux.reinits) == 0
  assert int(alg.reinitialize(TASK, state, data).aux.reinits) == 4  # the real ones, when running


def test_epoch_schedule():
  got = [int(epoch_length_of(e, 100, 1.5)) for e in range(6)]
  assert got == [100, 150, 225, 338, 506, 759]  # round(100 * 1.5^e)
  assert int(epoch_length_of(0, 1, 1.0)) == 1
  assert int(epoch_length_of(200, 100, 3.0)) == 2 ** 30  # clipped, no overflow


# ---------------------------------------------------------------- determinism, padding, chunking

@pytest.fixture(scope='module')
def reinit_runs():
  """Runs where re-initialization certainly happens (short epochs, width = rank), three ways."""
  order, dim, width = 3, 6, 3
  t = make_target(order, dim, 3, 'orthonormal', seed=5, weights=(1.0, 0.5, 0.25))
  alg = make_alg(epoch_length=5)
  task = core.Task(order=order, loss='implicit', steps=600)
  datas = [run_data(t, order, width, 5, seed=s, eps=1e-6) for s in (5, 6)]
  a = run_engine(alg, task, datas, chunk_steps=150)
  b = run_engine(alg, task, datas, chunk_steps=40, trace_every=20)
  unpadded = run_engine(alg, task, [run_data(t, order, width, 3, seed=s, eps=1e-6) for s in (5, 6)],
                        chunk_steps=150)
  return a, b, unpadded, (alg, task, t)


@pytest.mark.slow
def test_deterministic_with_reinitialization(reinit_runs):
  a, b, _, _ = reinit_runs
  assert np.all(a.extras['reinitialized'] > 0)
  chex.assert_trees_all_equal(a.state, b.state)  # chunking changes nothing
  np.testing.assert_array_equal(a.exported[0], b.exported[0])
  assert int(b.trace['epoch'][0, -1]) == int(a.extras['epochs'][0])


def test_padded_run_computes_the_unpadded_run(reinit_runs):
  a, _, u, _ = reinit_runs
  np.testing.assert_array_equal(a.extras['reinitialized'], u.extras['reinitialized'])
  np.testing.assert_array_equal(a.state.step, u.state.step)
  np.testing.assert_allclose(a.state.params['factors'][:, :3], u.state.params['factors'], rtol=1e-9, atol=1e-14)
  np.testing.assert_array_equal(a.state.params['factors'][:, 3:], a.state.params0['factors'][:, 3:])  # inert
  np.testing.assert_array_equal(a.exported[0][:, 3:], 0.0)


def test_the_engine_runs_what_fit_runs(reinit_runs):
  """One definition of a run: the engine's scanned chunks and fit's while_loop give the same numbers."""
  _, _, u, (alg, task, t) = reinit_runs
  for i, seed in enumerate((5, 6)):
    res = overparam.fit(alg, jax.random.PRNGKey(seed), overparam.CPTensor(t.coeffs, t.factors, 3), width=3,
                        steps=task.steps, eps=1e-6)
    assert int(res.steps) == int(u.state.step[i]) and int(res.extras['reinitialized']) == int(u.extras['reinitialized'][i])
    np.testing.assert_allclose(res.factors, u.exported[1][i], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(res.coeffs, u.exported[0][i], rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------- loss forms and units

def _run_steps(alg, task, data, n):
  def body(s, _):
    s = alg.step(task, s, data)
    return s, (s.params['factors'], s.rel_err)
  return jax.jit(lambda d: jax.lax.scan(body, alg.init(task, d), None, length=n))(data)


@pytest.mark.slow
def test_dense_and_implicit_losses_drive_identical_trajectories():
  order, dim = 3, 4
  t = make_target(order, dim, 2, seed=2, weights=(1.0, 0.6))
  alg = make_alg(epoch_length=10)
  implicit, dense = (core.Task(order=order, loss=k, steps=3000) for k in ('implicit', 'dense'))
  (si, (wi, ri)) = _run_steps(alg, implicit, run_data(t, order, 4, 4, seed=2, eps=1e-12), 150)
  (sd, (wd, rd)) = _run_steps(alg, dense, run_data(t, order, 4, 4, seed=2, loss='dense', eps=1e-12), 150)
  assert int(si.aux.reinits) > 0 and int(si.aux.reinits) == int(sd.aux.reinits)
  np.testing.assert_allclose(np.asarray(wi), np.asarray(wd), rtol=1e-8, atol=1e-12)
  np.testing.assert_allclose(np.asarray(ri), np.asarray(rd), rtol=1e-8, atol=1e-10)  # implicit: cancellation


@pytest.mark.slow
def test_trains_on_the_normalized_target():
  """Scaling T* by s leaves the run unchanged and scales the export by s (dimensionless units)."""
  order, dim = 3, 4
  t = make_target(order, dim, 2, seed=4)
  big = t._replace(coeffs=7.0 * t.coeffs)
  alg = make_alg(epoch_length=10)
  task = core.Task(order=order, loss='implicit', steps=3000)
  d1, d7 = run_data(t, order, 4, 4, seed=4, eps=1e-12), run_data(big, order, 4, 4, seed=4, eps=1e-12)
  s1, (w1, r1) = _run_steps(alg, task, d1, 100)
  s7, (w7, r7) = _run_steps(alg, task, d7, 100)
  np.testing.assert_allclose(np.asarray(w7), np.asarray(w1), rtol=1e-9, atol=1e-14)
  np.testing.assert_allclose(np.asarray(r7), np.asarray(r1), rtol=1e-9)
  c1, v1 = alg.export(task, s1, d1)
  c7, v7 = alg.export(task, s7, d7)
  np.testing.assert_allclose(np.asarray(c7), 7.0 * np.asarray(c1), rtol=1e-9)
  # the export is the trained (normalized) model times ||T*||: same relative error
  _, dl = alg.loss(task, s7.params, d7)
  np.testing.assert_allclose(objectives.rel_error_f64(c7, v7, big, order), np.sqrt(2 * float(dl)), rtol=1e-9)


def test_trace_alignment_matches_host_recovery(reinit_runs):
  _, b, _, _ = reinit_runs
  assert set(b.trace) >= {'rel_error', 'step', 'epoch', 'max_cos', 'aligned_weight', 'active_components'}
  assert b.trace['max_cos'].shape[:2] == (2, 600 // 20)


# ---------------------------------------------------------------- config and the experiment

@pytest.mark.parametrize('field,value,match', [
    ('lr', 0.0, 'config.beyond_lazy.lr must be a finite number > 0'),
    ('init_scale', -1.0, 'config.beyond_lazy.init_scale must be a finite number > 0'),
    ('reinit_threshold', -1e-3, 'config.beyond_lazy.reinit_threshold must be a finite number >= 0'),
    ('epoch_length', 0, 'config.beyond_lazy.epoch_length must be an integer >= 1'),
    ('epoch_growth', 0.9, 'config.beyond_lazy.epoch_growth must be a finite number >= 1'),
    ('reg', float('nan'), 'config.beyond_lazy.reg must be a finite number'),
])
def test_config_validation(field, value, match):
  c = config_lib.base_config()
  c.beyond_lazy[field] = value
  with pytest.raises(ConfigError, match=match.replace('.', r'\.')):
    config_lib.validate(c)


@pytest.mark.slow
def test_both_arms_in_one_sweep(tmp_path):
  c = config_lib.base_config()
  c.algorithms = ('beyond_lazy', 'gd')
  c.order, c.dims, c.rank, c.widths, c.num_seeds = 3, (5,), 2, (4,), 2
  c.steps, c.chunk_steps, c.trace_every, c.eps = 200, 100, 50, 0.05
  c.checkpoint_every_s = 0.0
  summary = experiments.run(c, str(tmp_path))
  with open(tmp_path / 'results.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert sorted({r['algorithm'] for r in rows}) == ['beyond_lazy', 'gd']
  for r in rows:
    assert len(r['max_cos']) == 2 and len(r['aligned_weight']) == 2
    assert 0.0 <= r['recovered_fraction'] <= 1.0 and isinstance(r['active_components'], int)
    with np.load(tmp_path / r['trajectory_file']) as z:
      n = z['rel_error'].shape[0]  # the engine stops early once every run of a program is done
      assert 1 <= n <= 4
      if r['algorithm'] == 'beyond_lazy':
        assert z['max_cos'].shape == (n, 2)
        assert isinstance(r['epochs'], int) and isinstance(r['reinitialized'], int)
        np.testing.assert_allclose(z['max_cos'][-1], r['max_cos'], rtol=1e-5)
  assert {t['algorithm'] for t in summary['thresholds']} == {'beyond_lazy', 'gd'}


def test_cp_file_target_gets_recovery_metrics(tmp_path):
  """A .npz (coeffs, factors) target is factored: implicit loss, rows carry recovery against it."""
  t = make_target(3, 5, 2, 'orthonormal', seed=9, weights=(1.0, 0.5))
  path = str(tmp_path / 'target.npz')
  np.savez(path, coeffs=np.asarray(t.coeffs), factors=np.asarray(t.factors))
  c = config_lib.base_config()
  c.algorithms = ('beyond_lazy',)
  c.order, c.dims, c.rank, c.widths, c.num_seeds = 3, (5,), 2, (4,), 2
  c.steps, c.chunk_steps, c.trace_every, c.eps = 200, 100, 50, 0.05  # the programs of the test above
  c.checkpoint_every_s = 0.0
  c.target.kind, c.target.path = 'file', path
  assert config_lib.resolve_loss(c) == 'implicit'
  experiments.run(c, str(tmp_path / 'wd'))
  with open(tmp_path / 'wd' / 'results.jsonl') as f:
    rows = [json.loads(line) for line in f]
  for r in rows:
    assert r['rel_error'] < 0.05 and r['recovered_fraction'] == 1.0
    with np.load(tmp_path / 'wd' / r['trajectory_file']) as z:
      assert z['max_cos'].shape[1] == 2
  c.target.noise = 0.01  # dense target, recovery still against the file's CP structure
  assert config_lib.resolve_loss(c) == 'dense'


@pytest.mark.slow
def test_ranks_axis(tmp_path):
  """config.ranks: one sweep over r; rows carry rank, files are tagged, m* is fitted against r."""
  c = config_lib.base_config()
  c.algorithms = ('beyond_lazy',)
  c.order, c.dims, c.rank, c.ranks, c.widths, c.num_seeds = 3, (5,), 1, (1, 2), (2, 3), 2  # one bucket
  c.steps, c.chunk_steps, c.trace_every, c.eps = 200, 100, 50, 0.05
  c.checkpoint_every_s = 0.0
  summary = experiments.run(c, str(tmp_path))
  with open(tmp_path / 'results.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert sorted((r['rank'], r['width'], r['seed']) for r in rows) == sorted(
      (k, m, s) for k in (1, 2) for m in (2, 3) for s in (0, 1))
  for r in rows:
    assert f"_r{r['rank']}_" in r['params_file'] and f"_r{r['rank']}_" in r['trajectory_file']
    assert len(r['max_cos']) == r['rank']
  ms = {t['rank']: t['m_star'] for t in summary['thresholds']}
  assert ms == {1: 2, 2: 2}
  fit, = [e for e in summary['exponents'] if e['versus'] == 'rank']
  np.testing.assert_allclose([fit['exponent'], fit['prefactor']], [0.0, 2.0], atol=1e-12)
  figs = set(os.listdir(tmp_path / 'figures'))
  assert {'m_star_vs_rank.png', 'success_vs_overparam.png', 'deflation.png'} <= figs
  c.target.weights = (1.0,)
  with pytest.raises(ConfigError, match='config.ranks must be empty'):
    config_lib.validate(c)


def test_float32_stops_below_eps():
  """guarded_update stops a float32 run only below (1 - F32_STOP_MARGIN) stop_eps (its float64 rel_error
  then lands below eps); a float64 run stops at stop_eps exactly."""
  task = core.Task(order=3, loss='implicit', steps=10)
  for dtype, want in ((jnp.float32, core.RUNNING), (jnp.float64, core.CONVERGED)):
    p = {'w': jnp.ones(2, dtype)}
    opt = optax.sgd(0.1)
    st = core.new_state(p, opt.init(p), p, dtype, rel_err=1.0)
    rel = 0.05 * (1 - core.F32_STOP_MARGIN / 2)  # between the float32 threshold and eps
    dl = jnp.asarray(0.5 * rel ** 2, dtype)
    data = core.RunData(init_key=None, reinit_key=None, mask=jnp.ones(2, dtype), width=jnp.asarray(2.0, dtype),
                        target=None, target_sq=jnp.asarray(1.0, dtype), stop_eps=jnp.asarray(0.05, dtype))
    out = core.guarded_update(task, st, (dl, dl), p, opt, data)
    assert int(out.status) == want
