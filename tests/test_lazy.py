"""The lazy regime (overparam/lazy.py) against independent numpy computations.

Jacobian and rank against a numpy Jacobian written from the derivative formulas; the linearization
against finite differences; GD on T_lin against the exact min-norm solution; alpha-scaled GD against
the lazy GD; padding; the memory refusal; the alpha cell axis and the summary through the engine.
"""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam import algorithms, analysis, config_lib, experiments, lazy, memory, objectives, results, tensors
from overparam.errors import ConfigError

from tests.support import np_outer_cp

F64 = jnp.float64


def run_data(order, dim, width, bucket, parametrization='cp', seed=0, signs=None, rank=2):
  """One run's RunData (unbatched), float64."""
  key = jax.random.PRNGKey(seed)
  t = tensors.make_target(jax.random.fold_in(key, 0), 'random_unit', order, dim, rank, dtype=F64)
  if signs is None:
    signs = np.where(np.arange(bucket) % 3 == 2, -1.0, 1.0)  # some negative signs for power/homogeneous
  return algorithms.RunData(
      init_key=jax.random.fold_in(key, 1), reinit_key=jax.random.fold_in(key, 2),
      mask=jnp.asarray(np.arange(bucket) < width, F64), signs=jnp.asarray(signs, F64),
      width=jnp.asarray(width, F64), target=t, target_sq=tensors.target_sq_norm(t, order))


def make(cls, order, dim, bucket, parametrization='cp', **kw):
  spec = objectives.Spec(order, parametrization, 'dense')
  kw.setdefault('steps', 1)
  kw.setdefault('eps', 1e-300)  # never stop early: these tests compare iterates
  return cls(spec=spec, dim=dim, bucket=bucket, dtype=F64, **kw)


# ------------------------------------------------------------------------------------------------
# numpy oracles

def np_outer(vs):
  t = vs[0]
  for v in vs[1:]:
    t = np.multiply.outer(t, v)
  return t


def np_dpower(u, k, order):
  """d/du_k of u^{(x)l} = sum over positions p of u..u e_k u..u."""
  e = np.eye(u.size)[k]
  return sum(np_outer([e if q == p else u for q in range(order)]) for p in range(order))


def np_jacobian(params, parametrization, signs, width, order, scale=1.0):
  """Dense (d^l, P) Jacobian of W -> scale sum_{i<width} T_i(W), columns in ravel_pytree order."""
  w = np.asarray(params['factors'], np.float64)
  b, d = w.shape
  cols = []
  if parametrization == 'cp':
    c = np.asarray(params['coeffs'], np.float64)
    cols += [(np_outer([w[i]] * order) if i < width else np.zeros((d,) * order)) for i in range(b)]
  for i in range(b):
    for k in range(d):
      if i >= width:
        cols.append(np.zeros((d,) * order))
        continue
      u = w[i]
      if parametrization == 'cp':
        cols.append(c[i] * np_dpower(u, k, order))
      elif parametrization == 'power':
        cols.append(signs[i] * np_dpower(u, k, order))
      else:  # s ||w||^{2-l} w^{(x)l}
        n = np.linalg.norm(u)
        cols.append(signs[i] * ((2 - order) * n ** (-order) * u[k] * np_outer([u] * order)
                                + n ** (2 - order) * np_dpower(u, k, order)))
  return scale * np.stack([x.reshape(-1) for x in cols], axis=1)


def np_unique_rows(dim, order):
  """(flat dense positions of the sorted multi-indices, sqrt(multiplicity)), by brute force."""
  combos = list(itertools.combinations_with_replacement(range(dim), order))
  pos = [np.ravel_multi_index(e, (dim,) * order) for e in combos]
  mult = [len(set(itertools.permutations(e))) for e in combos]
  return np.array(pos), np.sqrt(np.array(mult, np.float64))


# ------------------------------------------------------------------------------------------------
# The unique-entry basis

@pytest.mark.slow
@pytest.mark.parametrize('order,dim', [(2, 5), (3, 4), (4, 3)])
def test_unique_basis_is_an_isometry_on_symmetric_tensors(order, dim):
  rng = np.random.default_rng(order)
  t = np.asarray(tensors.symmetrize(jnp.asarray(rng.normal(size=(dim,) * order))))
  pos, w = np_unique_rows(dim, order)
  assert lazy.sym_dim(dim, order) == len(pos) == math.comb(dim + order - 1, order)
  u = np.asarray(lazy.to_unique(jnp.asarray(t), order))
  np.testing.assert_allclose(u, w * t.reshape(-1)[pos], rtol=1e-13)
  np.testing.assert_allclose(np.linalg.norm(u), np.linalg.norm(t), rtol=1e-13)
  np.testing.assert_allclose(np.asarray(lazy.from_unique(jnp.asarray(u), dim, order)), t, rtol=1e-13, atol=1e-15)
  # a non-symmetric tensor is first projected onto the symmetric ones
  a = rng.normal(size=(dim,) * order)
  np.testing.assert_allclose(np.asarray(lazy.to_unique(jnp.asarray(a), order)),
                             np.asarray(lazy.to_unique(tensors.symmetrize(jnp.asarray(a)), order)), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# Jacobian, rank, linearization

RANK_CASES = [  # (order, d, m, parametrization): below, at and above the count, defective ones
    (3, 4, 3, 'cp'),          # m d = 12 < 20: rank 12
    (3, 4, 6, 'power'),       # 24 >= 20: full
    (3, 5, 7, 'cp'),          # m d = 35 = C(7, 3), yet rank 34 (Alexander-Hirschowitz)
    (4, 3, 5, 'homogeneous'),  # m d = 15 = C(6, 4), yet rank 14 (Alexander-Hirschowitz)
    (4, 3, 6, 'cp'),          # full
]


@pytest.mark.slow
@pytest.mark.parametrize('order,dim,width,parametrization', RANK_CASES)
def test_unique_jacobian_and_rank_match_numpy(order, dim, width, parametrization):
  bucket = width + 2  # padded: two masked components
  data = run_data(order, dim, width, bucket, parametrization)
  alg = make(lazy.LazyExact, order, dim, bucket, parametrization, init_scale=0.8)
  params = alg.init_params(data)
  jnp_j = np.asarray(jax.jit(alg.unique_jacobian)(params, data))
  dense_j = np_jacobian(params, parametrization, np.asarray(data.signs), width, order)
  pos, w = np_unique_rows(dim, order)
  np.testing.assert_allclose(jnp_j, w[:, None] * dense_j[pos], rtol=1e-11, atol=1e-12)
  state = jax.jit(alg.init)(data)
  mask = np.arange(bucket) < width
  real = np.repeat(mask, dim) if parametrization != 'cp' else np.concatenate([mask, np.repeat(mask, dim)])
  want = np.linalg.matrix_rank(dense_j[:, real])
  assert int(state.aux['tangent_rank']) == want
  if (order, dim, width) in ((3, 5, 7), (4, 3, 5)):
    assert want == lazy.sym_dim(dim, order) - 1  # the count m d >= C(d+l-1, l) is not sufficient


@pytest.mark.slow
@pytest.mark.parametrize('symmetric_init,ntk_scaling', [(False, False), (True, True)])
def test_linearization_is_first_order_exact(symmetric_init, ntk_scaling):
  """T_lin(W0 + h V) - T(W0 + h V) = O(h^2), and J V equals a central difference of T."""
  order, dim, width, bucket = 3, 4, 3, 5
  data = run_data(order, dim, width, bucket)
  alg = make(lazy.Lazy, order, dim, bucket, symmetric_init=symmetric_init, ntk_scaling=ntk_scaling)
  p0 = alg.init_params(data)
  leaves, treedef = jax.tree.flatten(p0)
  v = jax.tree.unflatten(treedef, [jax.random.normal(jax.random.PRNGKey(3 + j), x.shape, F64)
                                   for j, x in enumerate(leaves)])
  t0 = alg.model(p0, data)
  if symmetric_init:
    assert float(jnp.max(jnp.abs(t0))) == 0.0
  at = lambda h: jax.tree.map(lambda a, b: a + h * b, p0, v)
  gaps = []
  for h in (1e-2, 5e-3):
    gaps.append(float(jnp.linalg.norm(alg.model(at(h), data) - alg.t_lin(at(h), p0, t0, data))))
  np.testing.assert_allclose(gaps[0] / gaps[1], 4.0, rtol=0.05)  # quadratic in h
  h = 1e-5  # central difference: truncation ~h^2, rounding ~1e-16 / h
  jv = np.asarray(alg.linearize(p0, data)[1](v))
  fd = np.asarray((alg.model(at(h), data) - alg.model(at(-h), data)) / (2 * h))
  np.testing.assert_allclose(jv, fd, atol=1e-8 * np.max(np.abs(jv)))
  # masked components contribute nothing
  p_masked = jax.tree.map(lambda a, b: a.at[width:].add(b[width:]), p0, v)
  np.testing.assert_allclose(np.asarray(alg.t_lin(p_masked, p0, t0, data)), np.asarray(t0), atol=1e-14)


def test_linearization_gap_dense_implicit_and_numpy_agree():
  order, dim, width, bucket = 3, 4, 3, 4
  data = run_data(order, dim, width, bucket)
  spec = objectives.Spec(order, 'cp', 'implicit')
  p0 = objectives.init_params(data.init_key, 'cp', bucket, dim, 0.7, F64)
  p = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(5), x.shape, F64), p0)
  alpha = 3.0
  dense = float(algorithms.linearization_gap(p, p0, data, spec, dim, alpha))
  implicit = float(algorithms.linearization_gap(p, p0, data, spec, dim, alpha, dense_limit=0))
  m = lambda q: np_outer_cp(np.asarray(q['coeffs'])[:width], np.asarray(q['factors'])[:width], order)
  delta = np.concatenate([np.asarray(p[k] - p0[k]).reshape(-1) for k in ('coeffs', 'factors')])
  jd = (np_jacobian(p0, 'cp', None, width, order) @ delta).reshape((dim,) * order)
  want = alpha * np.linalg.norm(m(p) - m(p0) - jd) / np.sqrt(float(data.target_sq))
  np.testing.assert_allclose(dense, want, rtol=1e-10)
  np.testing.assert_allclose(implicit, want, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# GD on T_lin == the exact lazy optimum; padding

def _run(alg, data, steps):
  state = alg.init(data)
  return jax.lax.fori_loop(0, steps, lambda _, s: alg.step(s, data), state)


@pytest.mark.slow
@pytest.mark.parametrize('width,momentum', [(2, 0.0), (9, 0.9)])
def test_lazy_gd_converges_to_the_exact_min_norm_solution(width, momentum):
  """Below (m d = 8 < 20) and above (36 >= 20) the threshold, GD from W0 reaches lazy_exact's
  model and its parameters (GD from W0 stays in W0 + range(J^T): the min-norm solution)."""
  order, dim, bucket = 3, 4, width + 1
  data = run_data(order, dim, width, bucket)
  exact = make(lazy.LazyExact, order, dim, bucket, init_scale=1.0)
  gd = make(lazy.Lazy, order, dim, bucket, init_scale=1.0, steps=4000, momentum=momentum)
  s_exact = jax.jit(exact.init)(data)
  s_gd = jax.jit(lambda d: _run(gd, d, 4000))(data)
  t_exact = np.asarray(exact.dense_model(s_exact, data))
  t_gd = np.asarray(gd.dense_model(s_gd, data))
  scale = np.linalg.norm(t_exact)
  np.testing.assert_allclose(t_gd, t_exact, atol=1e-8 * scale)
  for a, b in zip(jax.tree.leaves(s_gd.params), jax.tree.leaves(s_exact.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  below = width * dim < lazy.sym_dim(dim, order)
  assert (float(s_exact.rel_err) > 0.1) == below
  assert int(s_exact.aux['tangent_rank']) == (width * dim if below else lazy.sym_dim(dim, order))


@pytest.mark.slow
def test_padding_changes_nothing():
  """A width-m run padded to a wider bucket computes what the unpadded run computes."""
  order, dim, width = 3, 4, 3
  out = {}
  for bucket in (width, width + 4):
    data = run_data(order, dim, width, bucket, signs=np.ones(bucket))
    ex = make(lazy.LazyExact, order, dim, bucket, symmetric_init=True, ntk_scaling=True)
    gd = make(lazy.Lazy, order, dim, bucket, symmetric_init=True, ntk_scaling=True, steps=50)
    def f(data, ex=ex, gd=gd):
      se, sg = ex.init(data), _run(gd, data, 50)
      return (se.aux['tangent_rank'], sg.aux['lambda_max'], ex.dense_model(se, data), gd.dense_model(sg, data),
              gd.extras(sg, data)['linearization_gap'])
    out[bucket] = jax.tree.map(np.asarray, jax.jit(f)(data))
  a, b = out[width], out[width + 4]
  assert a[0] == b[0] == width * dim
  np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
  np.testing.assert_allclose(a[2], b[2], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(a[3], b[3], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(a[4], b[4], rtol=1e-8)


# ------------------------------------------------------------------------------------------------
# The whole width grid from one factorization (LazyExact(widths=...)) == the per-width path

@pytest.mark.parametrize('parametrization', ['cp', 'power', 'homogeneous'])
@pytest.mark.parametrize('symmetric_init', [False, True])
def test_inits_are_nested(parametrization, symmetric_init):
  """The grid path rests on this: a width-m init is the first m components of the width-M init."""
  small = make(lazy.LazyExact, 3, 4, 3, parametrization, symmetric_init=symmetric_init)
  big = make(lazy.LazyExact, 3, 4, 7, parametrization, symmetric_init=symmetric_init)
  data = run_data(3, 4, 3, 7)
  a, b = small.init_params(data), big.init_params(data)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y)[:3])


def test_prefix_min_norm_matches_numpy_pinv():
  """factor_components + prefix_min_norm on a matrix with rank-deficient prefixes (a dependent column
  in every block, a repeated block, more columns than rows) against numpy's pinv and matrix_rank."""
  rng = np.random.default_rng(0)
  n, k, m = 12, 3, 7
  cols = []
  for i in range(m):
    blk = rng.normal(size=(n, k))
    blk[:, 2] = blk[:, 0] - 2.0 * blk[:, 1]  # rank 2 per block
    cols.append(cols[1] if i == 4 else blk)   # block 4 repeats block 1: adds nothing
  j = np.concatenate(cols, axis=1)
  widths = (1, 3, 4, 5, 6, 7)  # rank 2, 6, 8, 8, 10, 12 (saturated at 12 rows)
  b = rng.normal(size=(n, len(widths)))
  tau = np.sqrt(n * np.finfo(np.float64).eps) * np.linalg.norm(j[:, :k], axis=0).max()
  for panel in (3, 6, 512):  # one block per panel, two, all in one
    coef, s, comp = lazy.factor_components(jnp.asarray(np.concatenate([j, b], axis=1)), m * k, k, tau, panel)
    ranks, xs = lazy.prefix_min_norm(coef, s, comp, widths, k, n)
    for q, w in enumerate(widths):
      jw = j[:, :w * k]
      assert int(ranks[q]) == np.linalg.matrix_rank(jw) == [2, 6, 8, 8, 10, 12][q]
      want = np.linalg.pinv(jw) @ b[:, q]
      np.testing.assert_allclose(np.asarray(xs[q])[:w * k], want, atol=1e-10 * np.abs(want).max())
      assert np.all(np.asarray(xs[q])[w * k:] == 0)


GRID_CASES = [  # (order, d, widths, parametrization, symmetric_init, ntk_scaling, panel_cols)
    (3, 5, (3, 6, 7, 8, 10), 'cp', True, False, 512),            # (3, 5): m = 7 defective (rank 34 < 35)
    (3, 5, (3, 6, 7, 8, 10), 'cp', False, True, 12),             # T(W0) per width, NTK scale, 4 panels
    (4, 3, (2, 4, 5, 6, 8), 'homogeneous', False, False, 512),   # (4, 3): m = 5 defective
    (4, 4, (5, 8, 9, 10), 'power', True, True, 8),               # (4, 4): m = 9 defective (rank 34)
    (4, 5, (10, 13, 14, 15, 16), 'cp', True, False, 60),         # (4, 5): m = 14 defective (rank 69)
]


@pytest.mark.parametrize('order,dim,widths,parametrization,symmetric_init,ntk_scaling,panel_cols', GRID_CASES)
def test_grid_path_matches_the_per_width_path(order, dim, widths, parametrization, symmetric_init, ntk_scaling,
                                              panel_cols):
  """Every width of the grid: the same tangent rank (and numpy's rank of the dense Jacobian), rel_error
  to 1e-8, the same parameters (movement) and linearization gap, as the per-width min_norm_solve path
  (eigendecomposition of the Gram matrix) run in the same bucket."""
  big = widths[-1]
  kw = dict(symmetric_init=symmetric_init, ntk_scaling=ntk_scaling, init_scale=0.8)
  grid = make(lazy.LazyExact, order, dim, big, parametrization, widths=widths, panel_cols=panel_cols, **kw)
  ref = make(lazy.LazyExact, order, dim, big, parametrization, **kw)
  data = run_data(order, dim, big, big, parametrization)
  per = jax.tree.map(lambda *x: jnp.stack(x), *[grid._width_data(data, m) for m in widths])

  def reference(d):
    s = ref.init(d)
    return s, ref.extras(s, d), ref.dense_model(s, d)
  s_ref, e_ref, t_ref = jax.jit(jax.vmap(reference))(per)
  s_grid = jax.jit(grid.init)(data)
  e_grid, t_grid = jax.jit(grid.extras)(s_grid, data), jax.jit(grid.dense_model)(s_grid, data)
  params0 = s_ref.params0['plus'] if symmetric_init else s_ref.params0
  for j, m in enumerate(widths):
    p0 = jax.tree.map(lambda x: x[j], params0)
    dense_j = np_jacobian(p0, parametrization, np.asarray(data.signs), m, order)
    assert int(e_grid['tangent_rank'][j]) == int(e_ref['tangent_rank'][j]) == np.linalg.matrix_rank(dense_j)
  np.testing.assert_allclose(np.asarray(s_grid.rel_err), np.asarray(s_ref.rel_err), rtol=0, atol=1e-8)
  np.testing.assert_allclose(np.asarray(t_grid), np.asarray(t_ref), rtol=0, atol=1e-8 * float(np.sqrt(data.target_sq)))
  for a, b in zip(jax.tree.leaves(s_grid.params), jax.tree.leaves(s_ref.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(np.asarray(e_grid['linearization_gap']), np.asarray(e_ref['linearization_gap']), rtol=1e-6)
  defective = {(3, 5): 7, (4, 3): 5, (4, 4): 9, (4, 5): 14}.get((order, dim))
  if defective in widths:  # Alexander-Hirschowitz: m d >= C(d+l-1, l), yet one short of full rank
    assert int(e_grid['tangent_rank'][widths.index(defective)]) == lazy.sym_dim(dim, order) - 1
    assert defective * dim >= lazy.sym_dim(dim, order)


def test_power_iteration_finds_lambda_max():
  order, dim, width = 3, 4, 5
  data = run_data(order, dim, width, width)
  alg = make(lazy.Lazy, order, dim, width, power_iters=200)
  p0 = alg.init_params(data)
  lam = float(alg.lambda_max(p0, data))
  j = np_jacobian(p0, 'cp', None, width, order)
  np.testing.assert_allclose(lam, np.linalg.norm(j, 2) ** 2, rtol=1e-8)


# ------------------------------------------------------------------------------------------------
# alpha-scaling approaches the lazy model

@pytest.mark.slow
def test_alpha_scaled_gd_approaches_lazy_gd():
  """GD on T(W0) + alpha (T(W) - T(W0)) with loss / alpha^2 and lazy GD with the same step and init:
  their models differ by O(1/alpha), and so does the linearization gap."""
  order, dim, width, steps = 3, 4, 4, 60
  data = run_data(order, dim, width, width)
  lz = make(lazy.Lazy, order, dim, width, init_scale=0.5, steps=steps)
  s_lazy = jax.jit(lambda d: _run(lz, d, steps))(data)
  lr = float(s_lazy.aux['lr'])
  t_lazy = np.asarray(lz.dense_model(s_lazy, data))
  errs, gaps = [], []
  for alpha in (100.0, 10000.0):
    gd = algorithms.GD(spec=objectives.Spec(order, 'cp', 'implicit'), dim=dim, bucket=width, steps=steps, lr=lr,
                       init_scale=0.5, alpha=alpha, eps=1e-300, dtype=F64)
    s = jax.jit(lambda d: _run(gd, d, steps))(data)
    c, v = gd.export(s, data)
    errs.append(np.linalg.norm(np.asarray(tensors.dense_cp(c, v, order)) - t_lazy) / np.linalg.norm(t_lazy))
    gaps.append(float(gd.extras(s, data)['linearization_gap']))
  assert errs[1] < 1e-3
  np.testing.assert_allclose(errs[0] / errs[1], 100.0, rtol=0.2)
  np.testing.assert_allclose(gaps[0] / gaps[1], 100.0, rtol=0.2)


# ------------------------------------------------------------------------------------------------
# Config, memory refusal, engine, summary

def tiny_config(**kw):
  c = config_lib.base_config()
  c.algorithms = ('lazy_exact', 'lazy', 'gd')
  c.order, c.dims, c.rank, c.widths, c.num_seeds = 3, (4,), 2, (2, 9), 2
  c.steps, c.chunk_steps, c.eps, c.x64, c.init_scale, c.lr = 600, 300, 1e-2, True, 1.0, 0.02
  c.lazy.symmetric_init, c.lazy.momentum = True, 0.9
  c.alphas = (1.0, 100.0)
  for k, v in kw.items():
    c[k] = v
  return c


def test_memory_refusal_before_anything_is_written(tmp_path):
  c = tiny_config(algorithms=('lazy_exact',), lr=0.05, alphas=())  # lr, alphas: gd's, at their defaults
  c.memory_gb = 1e-6
  # lazy_exact is one program per d: its runs are the seeds, each factorizing J at the largest width
  with pytest.raises(ConfigError, match=r'lazy_exact program for d=4, widths \[2, 9\] \(2 runs per device, J of 20 x 45 '):
    experiments.run(c, str(tmp_path / 'wd'))
  assert not os.path.exists(tmp_path / 'wd')
  need = lazy.exact_program_bytes(3, 4, 'cp', 8, (2, 9), 2)  # two seeds
  assert need >= 8 * 2 * (2 * 20 * 45 + 45 * 45)  # J and its copy, the panels' coefficients, per seed
  c.memory_gb = need / 2 ** 30
  memory.check(c)
  c.memory_gb = 0.99 * need / 2 ** 30
  with pytest.raises(ConfigError, match=r'widths \[2, 9\] .2 runs per device, J of 20 x 45 .C.d\+l-1,l. x params. per seed'):
    memory.check(c)


@pytest.mark.parametrize('field,value,match', [
    ('lr_scale', 2.0, r'config.lazy.lr_scale must be < 2.0'),
    ('momentum', 1.0, r'config.lazy.momentum must be < 1.0'),
    ('power_iters', 0, r'config.lazy.power_iters must be an integer >= 1'),
])
def test_lazy_fields_are_validated(field, value, match):
  c = tiny_config()
  c.lazy[field] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_alphas_are_validated():
  with pytest.raises(ConfigError, match=r'config.alphas must be > 0'):
    config_lib.validate(tiny_config(alphas=(1.0, -1.0)))
  with pytest.raises(ConfigError, match=r'config.alphas has duplicates'):
    config_lib.validate(tiny_config(alphas=(1.0, 1.0)))


@pytest.mark.slow
def test_engine_rows_alpha_axis_resume_and_summary(tmp_path):
  wd = str(tmp_path / 'wd')
  c = tiny_config()
  summary = experiments.run(c, wd)
  rows = results.Workdir(wd).load_results()
  assert len(rows) == 2 * 2 * (1 + 1 + 2)  # widths x seeds x (lazy_exact, lazy, gd at two alphas)
  by = {(r['algorithm'], r['width'], r['seed'], r['alpha']): r for r in rows}
  for (alg, width, seed, alpha), r in by.items():
    assert (alpha is None) == (alg != 'gd')
    assert r['linearization_gap'] is not None and r['movement'] is not None
    if alg == 'lazy_exact':
      assert r['tangent_rank'] == min(width * 4, 20) and r['sym_dim'] == 20
      assert r['params_file'] is None and r['steps'] == 0
  # below the threshold the lazy optimum misses T*, above it fits it; GD on T_lin agrees
  for seed in (0, 1):
    assert by[('lazy_exact', 2, seed, None)]['rel_error'] > 0.3
    assert by[('lazy_exact', 9, seed, None)]['rel_error'] < 1e-10
    np.testing.assert_allclose(by[('lazy', 2, seed, None)]['rel_error'], by[('lazy_exact', 2, seed, None)]['rel_error'],
                               rtol=1e-3)
    assert by[('lazy', 9, seed, None)]['status'] == 'converged'
    # alpha = 100 moves the parameters ~100x less than alpha = 1 would need to
    assert by[('gd', 9, seed, 100.0)]['movement'] < by[('gd', 9, seed, 1.0)]['movement']
  # the same files for both alphas would collide: they carry the alpha
  assert len({r['params_file'] for r in rows if r['algorithm'] == 'gd'}) == 8
  ths = {(t['algorithm'], t.get('alpha')): t['m_star'] for t in summary['thresholds']}
  assert ths[('lazy_exact', None)] == ths[('lazy', None)] == 9
  assert set(ths) == {('lazy_exact', None), ('lazy', None), ('gd', 1.0), ('gd', 100.0)}
  rank_ths = summary['tangent_rank_thresholds']
  assert rank_ths == [{'algorithm': 'lazy_exact', 'order': 3, 'dim': 4, 'rank': 2, 'rank_m_star': 9,
                       'sym_dim': 20, 'dimension_count': 5.0}]
  assert os.path.exists(os.path.join(wd, 'figures', 'alpha_scaling.png'))
  # resuming computes nothing and keeps every (alpha) cell
  before = open(os.path.join(wd, 'results.jsonl')).read()
  experiments.run(c, wd)
  assert open(os.path.join(wd, 'results.jsonl')).read() == before


def test_summary_rank_threshold_and_exponents_from_rows():
  rows = []
  for d, th in ((4, 5), (8, 15), (16, 51)):
    n = math.comb(d + 2, 3)
    for w in (th - 1, th, th + 3):
      for seed in range(3):
        full = w >= th and not (w == th and seed == 0)  # one seed short at the threshold: majority still full
        rows.append({'algorithm': 'lazy_exact', 'order': 3, 'dim': d, 'rank': 2, 'width': w, 'seed': seed,
                     'rel_error': 1e-12 if full else 0.2, 'status': 'x', 'tangent_rank': n if full else n - 1,
                     'sym_dim': n})
  s = analysis.summarize(rows, 1e-2)
  assert [t['rank_m_star'] for t in s['tangent_rank_thresholds']] == [5, 15, 51]
  assert [t['m_star'] for t in s['thresholds']] == [5, 15, 51]
  fits = {e['quantity']: e for e in s['exponents']}
  want = np.polyfit(np.log([4, 8, 16]), np.log([5, 15, 51]), 1)[0]
  np.testing.assert_allclose(fits['rank_m_star']['exponent'], want, rtol=1e-12)
  np.testing.assert_allclose(fits['m_star']['exponent'], want, rtol=1e-12)
  counts = [math.comb(d + 2, 3) / d for d in (4, 8, 16)]
  np.testing.assert_allclose(fits['dimension_count']['exponent'], np.polyfit(np.log([4, 8, 16]), np.log(counts), 1)[0],
                             rtol=1e-12)
  json.dumps(s, allow_nan=False)


@pytest.mark.parametrize('name', ['lazy_threshold', 'lazy_threshold_l4', 'alpha_scaling'])
def test_configs_validate(name):
  import importlib.util  # noqa: PLC0415
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  config_lib.validate(c)
  assert 'python launch.py --config=configs/' + name + '.py' in mod.__doc__
  assert 'Expected run time' in mod.__doc__
