"""overparam.fit and the public model functions as contracts: shapes, defaults, statuses, errors raised
before anything is compiled, and composition with jax.jit and jax.vmap (over keys, targets and every
numeric hyperparameter, each compiled once)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import overparam
from overparam import core, fitting
from overparam.errors import ArgumentError, ConfigError, TargetError

D, L = 5, 3
KEY = jax.random.PRNGKey(0)


def cp_target(seed=0, r=2, d=D, weights=None):
  a = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, r)))[0].T
  c = np.ones(r) if weights is None else np.asarray(weights, np.float64)
  return overparam.CPTensor(jnp.asarray(c), jnp.asarray(a), L)


def dense_of(t):
  return np.einsum('r,ri,rj,rk->ijk', np.asarray(t.coeffs), *(np.asarray(t.factors),) * 3)


# Two values of every numeric hyperparameter of each algorithm (its pytree leaves), and a width.
CASES = {
    'gd': (lambda **k: overparam.gd(**k), dict(lr=(0.05, 0.08), init_scale=(0.3, 0.2), reg=(0.0, 1e-3),
                                               alpha=(2.0, 3.0)), 4),
    'beyond_lazy': (lambda **k: overparam.beyond_lazy(**k),
                    dict(lr=(0.2, 0.15), init_scale=(1e-3, 2e-3), reinit_threshold=(1e-2, 2e-2),
                         epoch_growth=(1.5, 2.0), reg=(1e-4, 0.0)), 4),
    'lazy': (lambda **k: overparam.lazy(**k), dict(init_scale=(0.3, 0.5), lr_scale=(1.0, 0.8), momentum=(0.5, 0.9)),
             12),
    'lazy_exact': (lambda **k: overparam.lazy_exact(**k), dict(init_scale=(0.3, 0.5)), 12),
}


@pytest.mark.parametrize('name', list(CASES))
def test_vmap_over_every_hyperparameter_equals_separate_fits_and_compiles_once(name):
  make, values, width = CASES[name]
  t = cp_target()
  algs = [make(**{k: v[i] for k, v in values.items()}) for i in range(2)]
  one = [overparam.fit(a, KEY, t, width=width, steps=150, eps=1e-3) for a in algs]
  stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float64) for x in xs]), *algs)
  batched = jax.jit(jax.vmap(lambda a: overparam.fit(a, KEY, t, width=width, steps=150, eps=1e-3)))
  out = batched(stacked)
  for i in range(2):
    np.testing.assert_allclose(out.rel_error[i], one[i].rel_error, rtol=1e-9, atol=1e-13)
    assert int(out.steps[i]) == int(one[i].steps) and int(out.status[i]) == int(one[i].status)
    for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(one[i].params)):
      np.testing.assert_allclose(a[i], b, rtol=1e-8, atol=1e-12)
  assert batched._cache_size() == 1
  batched(jax.tree.map(lambda x: x[::-1], stacked))  # other values, same shapes: no new compilation
  assert batched._cache_size() == 1
  first = lambda r: np.concatenate([np.ravel(x) for x in jax.tree.leaves(r.params)])
  assert not np.allclose(first(one[0]), first(one[1]))  # the values matter


def test_concrete_calls_with_new_hyperparameter_values_reuse_the_executable():
  t = cp_target()
  before = len(fitting._EXECUTABLES)  # noqa: SLF001
  for lr in (0.1, 0.12, 0.15):
    overparam.fit(overparam.gd(lr=lr), KEY, t, width=3, steps=20)
  assert len(fitting._EXECUTABLES) == before + 1  # noqa: SLF001


def test_the_docstring_example_vmaps_over_a_learning_rate():
  t = dense_of(cp_target())
  lrs = jnp.array([0.02, 0.05, 0.1])
  f = jax.jit(jax.vmap(lambda lr: overparam.fit(overparam.gd(lr=lr), KEY, t, width=6, steps=300).rel_error))
  errs = f(lrs)
  assert errs.shape == (3,) and f._cache_size() == 1
  np.testing.assert_allclose(errs[1], overparam.fit(overparam.gd(lr=0.05), KEY, t, width=6, steps=300).rel_error,
                             rtol=1e-9)


def test_vmap_over_keys_and_over_targets():
  ts = [cp_target(s) for s in range(3)]
  dense = jnp.stack([dense_of(t) for t in ts])
  keys = jax.random.split(KEY, 3)
  alg = overparam.beyond_lazy()
  by_key = jax.vmap(lambda k: overparam.fit(alg, k, dense[0], width=4, steps=400))(keys)
  by_target = jax.vmap(lambda t: overparam.fit(alg, KEY, t, width=4, steps=400))(dense)
  stacked_cp = overparam.CPTensor(jnp.stack([t.coeffs for t in ts]), jnp.stack([t.factors for t in ts]), L)
  by_cp = jax.vmap(lambda t: overparam.fit(alg, KEY, t, width=4, steps=400))(stacked_cp)
  for i in range(3):
    a = overparam.fit(alg, keys[i], dense[0], width=4, steps=400)
    b = overparam.fit(alg, KEY, dense[i], width=4, steps=400)
    c = overparam.fit(alg, KEY, ts[i], width=4, steps=400)
    np.testing.assert_allclose(by_key.factors[i], a.factors, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(by_target.factors[i], b.factors, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(by_cp.factors[i], c.factors, rtol=1e-9, atol=1e-12)
    # the dense and the implicit loss fit the same tensor to the same answer
    np.testing.assert_allclose(b.factors, c.factors, rtol=1e-6, atol=1e-8)


def test_result_contract_shapes_statuses_and_the_float64_error():
  t = cp_target(weights=(1.0, 0.5))
  res = overparam.fit(overparam.beyond_lazy(), KEY, t, width=5, eps=1e-3)
  assert res.coeffs.shape == (5,) and res.factors.shape == (5, D) and res.model is None
  assert res.status_name == 'converged' and float(res.rel_error) < 1e-3
  t_dense = dense_of(t)
  model = np.einsum('r,ri,rj,rk->ijk', np.asarray(res.coeffs), *(np.asarray(res.factors),) * 3)
  np.testing.assert_allclose(float(res.rel_error), np.linalg.norm(model - t_dense) / np.linalg.norm(t_dense),
                             rtol=1e-8)
  assert 0 < int(res.steps) < core.DEFAULT_STEPS
  lazy = overparam.fit(overparam.lazy_exact(), KEY, t, width=12)
  assert lazy.coeffs is None and lazy.model.shape == (D,) * L and lazy.status_name == 'converged'
  assert int(lazy.extras['tangent_rank']) == 35 and int(lazy.steps) == 0  # C(7, 3) = 35 <= 12 * 5
  short = overparam.fit(overparam.lazy_exact(), KEY, t, width=2)
  assert short.status_name == 'max_steps' and float(short.rel_error) > core.DEFAULT_EPS
  budget = overparam.fit(overparam.gd(), KEY, t, width=2, steps=3)
  assert budget.status_name == 'max_steps' and int(budget.steps) == 3


def test_divergence_is_a_status_not_a_number():
  t = cp_target()
  res = overparam.fit(overparam.gd(lr=50.0), KEY, t, width=4, steps=200)
  assert res.status_name == 'diverged' and not np.isfinite(float(res.rel_error))


def test_eps_none_trains_to_the_plateau():
  """eps=None: a run that cannot reach any eps (width 2 for a rank-3 target) stops at its plateau, the
  residual it keeps for 20x longer (within 0.5%), long before the budget; statuses say `plateau`."""
  t = cp_target(r=3, weights=(1.0, 0.7, 0.4))
  res = overparam.fit(overparam.beyond_lazy(), KEY, t, width=2, steps=40000, eps=None)
  assert res.status_name == 'plateau' and int(res.steps) < 4000
  longer = overparam.fit(overparam.beyond_lazy(), KEY, t, width=2, steps=20 * int(res.steps), eps=None,
                         plateau=(10 ** 6, 1e-3))
  assert longer.status_name == 'max_steps'
  assert abs(float(res.rel_error) / float(longer.rel_error) - 1) < 5e-3


def test_jit_of_fit_equals_the_eager_call():
  t = cp_target()
  eager = overparam.fit(overparam.gd(), KEY, t, width=3, steps=50)
  jitted = jax.jit(lambda k: overparam.fit(overparam.gd(), k, t, width=3, steps=50))(KEY)
  np.testing.assert_allclose(jitted.factors, eager.factors, rtol=1e-12)
  typed = overparam.fit(overparam.gd(), jax.random.key(0), t, width=3, steps=50)
  np.testing.assert_allclose(typed.factors, eager.factors, rtol=1e-12)  # new-style keys give the same run


BAD = [
    ('width0', dict(width=0), ArgumentError, 'width must be an integer >= 1, got 0'),
    ('width_float', dict(width=2.5), ArgumentError, 'width must be an integer'),
    ('steps', dict(steps=-1), ArgumentError, 'steps must be an integer'),
    ('eps', dict(eps=1.5), ArgumentError, r'eps must be a finite number > 0 and < 1'),
    ('eps_nan', dict(eps=float('nan')), ArgumentError, 'eps must be a finite number'),
    ('not_square', dict(target=np.ones((3, 4, 3))), TargetError, r'shape \(d,\)\*l'),
    ('ndim1', dict(target=np.ones(4)), TargetError, r'shape \(d,\)\*l'),
    ('empty', dict(target=np.ones((0, 0, 0))), TargetError, 'd >= 1'),
    ('asymmetric', dict(target=np.arange(27.0).reshape(3, 3, 3)), TargetError, 'not symmetric'),
    ('nan', dict(target=np.full((3, 3, 3), np.nan)), TargetError, 'non-finite'),
    ('zero', dict(target=np.zeros((3, 3, 3))), TargetError, 'zero tensor'),
    ('complex', dict(target=np.ones((3, 3, 3), complex)), TargetError, 'dtype must be float32 or float64'),
    ('bfloat16', dict(target=jnp.ones((3, 3, 3), jnp.bfloat16)), TargetError, 'got bfloat16'),
    ('ragged', dict(target=[[1.0, 2.0], [3.0]]), TargetError, 'numeric array'),
    ('cp_shapes', dict(target=overparam.CPTensor(np.ones(2), np.ones((3, 4)), 3)), TargetError, r'coeffs must have shape'),
    ('cp_order', dict(target=overparam.CPTensor(np.ones(2), np.ones((2, 4)), 1)), TargetError, 'order must be an integer >= 2'),
    ('cp_nan', dict(target=overparam.CPTensor(np.array([1.0, np.nan]), np.ones((2, 4)), 3)), TargetError, 'non-finite'),
    ('algorithm', dict(algorithm='gd'), ArgumentError, 'algorithm must be an algorithm value'),
]


@pytest.mark.parametrize('case', BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_the_argument_before_compiling(case, monkeypatch):
  _, change, err, match = case
  monkeypatch.setattr(fitting, 'executable', lambda *a, **k: pytest.fail('compiled'))  # noqa: ARG005
  kw = dict(algorithm=overparam.gd(), key=KEY, target=dense_of(cp_target()), width=3)
  kw.update(change)
  with pytest.raises(err, match=match):
    overparam.fit(kw.pop('algorithm'), kw.pop('key'), kw.pop('target'), **kw)


@pytest.mark.parametrize('make, arg, value, match', [
    (overparam.gd, 'lr', -1.0, 'lr must be a finite number > 0, got -1.0'),
    (overparam.gd, 'alpha', 0.0, 'alpha must be a finite number > 0'),
    (overparam.gd, 'reg', float('inf'), 'reg must be a finite number >= 0'),
    (overparam.gd, 'parametrization', 'tucker', 'parametrization must be one of cp, power, homogeneous'),
    (overparam.gd, 'optimizer', 'nope', 'optimizer must be an optax optimizer'),
    (overparam.beyond_lazy, 'epoch_length', 0, 'epoch_length must be an integer >= 1'),
    (overparam.beyond_lazy, 'epoch_growth', 0.5, 'epoch_growth must be a finite number >= 1'),
    (overparam.beyond_lazy, 'lr', np.array([0.1, -0.1]), 'lr must be a finite number > 0, got -0.1'),
    (overparam.lazy, 'lr_scale', 2.0, 'lr_scale must be a finite number > 0 and < 2'),
    (overparam.lazy, 'symmetric_init', 1, 'symmetric_init must be True or False'),
    (overparam.lazy_exact, 'init_scale', 'big', 'init_scale must be a finite number'),
])
def test_hyperparameters_are_checked_naming_the_argument(make, arg, value, match):
  with pytest.raises(ConfigError, match=match):
    make(**{arg: value})


def test_unknown_hyperparameter_names_the_argument():
  with pytest.raises(TypeError, match="unexpected keyword argument 'lrr'"):
    overparam.gd(lrr=0.1)


def test_a_program_that_does_not_fit_in_memory_is_refused_before_it_runs(monkeypatch):
  monkeypatch.setattr(fitting.memory, 'available_bytes', lambda: 10 ** 6)
  with pytest.raises(ConfigError, match=r'width=4000: the program needs about .* GiB > .* available'):
    overparam.fit(overparam.gd(), KEY, dense_of(cp_target()), width=4000, steps=5)


def test_model_functions_against_numpy_and_an_optax_loop():
  """init_params / cp_form / dense / loss / rel_error, and the README's own optax loop."""
  t = cp_target()
  t_dense = dense_of(t)
  params = overparam.init_params(KEY, 4, D, scale=0.5, dtype=jnp.float64)
  c, v = overparam.cp_form(params)
  model = np.einsum('r,ri,rj,rk->ijk', np.asarray(c), *(np.asarray(v),) * 3)
  np.testing.assert_allclose(overparam.dense(c, v, 3), model, rtol=1e-12)
  expect = 0.5 * np.sum((model - t_dense) ** 2)
  np.testing.assert_allclose(overparam.loss(params, t_dense), expect, rtol=1e-10)
  np.testing.assert_allclose(overparam.loss(params, t), expect, rtol=1e-8)  # the implicit form
  g_dense = jax.grad(overparam.loss)(params, t_dense)
  g_cp = jax.grad(overparam.loss)(params, t)
  for a, b in zip(jax.tree.leaves(g_dense), jax.tree.leaves(g_cp)):
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
  np.testing.assert_allclose(overparam.rel_error(c, v, t), np.linalg.norm(model - t_dense) / np.linalg.norm(t_dense),
                             rtol=1e-8)
  opt = optax.adam(0.05)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(overparam.loss)(params, t)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, value

  p, s = params, opt.init(params)
  for _ in range(300):
    p, s, value = step(p, s)
  assert float(overparam.rel_error(*overparam.cp_form(p), t)) < 0.05
