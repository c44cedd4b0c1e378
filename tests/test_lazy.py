"""The lazy regime (overparam/linearized.py) against independent numpy computations.

Jacobian and rank against a numpy Jacobian written from the derivative formulas; the linearization
against finite differences; GD on T_lin against the exact min-norm solution; alpha-scaled GD against
the lazy GD; padding; the memory refusal; the alpha cell axis and the summary through the engine.
"""

import dataclasses
import functools
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import overparam
from overparam import analysis, config_lib, core, experiments, lstsq, objectives, planner, results, symmetric, tensors
from overparam.fitting import run_data as fit_run_data
from overparam.gradient_descent import linearization_gap
from overparam.linearized import exact_program_bytes
from overparam.errors import ConfigError

from tests.support import np_outer_cp

F64 = jnp.float64
KEY = jax.random.PRNGKey(0)
NEVER = 1e-300  # an eps no run reaches: these tests compare iterates, not stopping times


def cp_target(order, dim, seed=0, rank=2):
  """The CP target of seed `seed` (the engine's key: fold_in(PRNGKey(seed), 0)), float64."""
  t = tensors.make_target(jax.random.fold_in(jax.random.PRNGKey(seed), 0), 'random_unit', order, dim, rank, dtype=F64)
  return overparam.CPTensor(t.coeffs, t.factors, order)


def make(constructor, **kw):
  """An algorithm value with float64 leaves (as overparam.fit casts them)."""
  return core.as_leaves(constructor(**kw), F64)


def run_data(alg, task, dim, width, bucket=None, seed=0):
  """One run's RunData (unbatched): fit.run_data's, with the first `width` of `bucket` components real."""
  bucket = bucket or width
  t = cp_target(task.order, dim, seed)
  data = fit_run_data(alg, task, jax.random.PRNGKey(seed), tensors.Target(coeffs=t.coeffs, factors=t.factors),
                      bucket, NEVER)
  return data._replace(mask=jnp.asarray(np.arange(bucket) < width, F64), width=jnp.asarray(width, F64))


def signs_of(parametrization):
  """Negative signs for power/homogeneous (balanced: +1, -1, ...), so the oracles see them."""
  return 'positive' if parametrization == 'cp' else 'balanced'


def _run(alg, task, data, steps):
  state = alg.init(task, data)
  return jax.lax.fori_loop(0, steps, lambda _, s: alg.step(task, s, data), state)


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
  assert symmetric.sym_dim(dim, order) == len(pos) == math.comb(dim + order - 1, order)
  u = np.asarray(symmetric.to_unique(jnp.asarray(t), order))
  np.testing.assert_allclose(u, w * t.reshape(-1)[pos], rtol=1e-13)
  np.testing.assert_allclose(np.linalg.norm(u), np.linalg.norm(t), rtol=1e-13)
  np.testing.assert_allclose(np.asarray(symmetric.from_unique(jnp.asarray(u), dim, order)), t, rtol=1e-13, atol=1e-15)
  # a non-symmetric tensor is first projected onto the symmetric ones
  a = rng.normal(size=(dim,) * order)
  np.testing.assert_allclose(np.asarray(symmetric.to_unique(jnp.asarray(a), order)),
                             np.asarray(symmetric.to_unique(tensors.symmetrize(jnp.asarray(a)), order)), rtol=1e-12)


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
  signs = signs_of(parametrization)
  alg = make(overparam.lazy_exact, parametrization=parametrization, signs=signs, init_scale=0.8)
  task = core.Task(order, 'dense', 1)
  data = run_data(alg, task, dim, width, bucket)
  params = alg.init_params(data)
  jnp_j = np.asarray(jax.jit(lambda p, d: alg.unique_jacobian(task, p, d))(params, data))
  dense_j = np_jacobian(params, parametrization, np.asarray(core.signs_vector(signs, bucket, F64)), width, order)
  pos, w = np_unique_rows(dim, order)
  np.testing.assert_allclose(jnp_j, w[:, None] * dense_j[pos], rtol=1e-11, atol=1e-12)
  state = jax.jit(lambda d: alg.init(task, d))(data)
  mask = np.arange(bucket) < width
  real = np.repeat(mask, dim) if parametrization != 'cp' else np.concatenate([mask, np.repeat(mask, dim)])
  want = np.linalg.matrix_rank(dense_j[:, real])
  assert int(state.aux['tangent_rank']) == want
  if (order, dim, width) in ((3, 5, 7), (4, 3, 5)):
    assert want == symmetric.sym_dim(dim, order) - 1  # the count m d >= C(d+l-1, l) is not sufficient


@pytest.mark.slow
@pytest.mark.parametrize('symmetric_init,ntk_scaling', [(False, False), (True, True)])
def test_linearization_is_first_order_exact(symmetric_init, ntk_scaling):
  """T_lin(W0 + h V) - T(W0 + h V) = O(h^2), and J V equals a central difference of T."""
  order, dim, width, bucket = 3, 4, 3, 5
  alg = make(overparam.lazy, symmetric_init=symmetric_init, ntk_scaling=ntk_scaling)
  task = core.Task(order, 'dense', 1)
  data = run_data(alg, task, dim, width, bucket)
  p0 = alg.init_params(data)
  leaves, treedef = jax.tree.flatten(p0)
  v = jax.tree.unflatten(treedef, [jax.random.normal(jax.random.PRNGKey(3 + j), x.shape, F64)
                                   for j, x in enumerate(leaves)])
  model = jax.jit(lambda p: alg.model(task, p, data))
  t_lin = jax.jit(lambda p, p0, t0: alg.t_lin(task, p, p0, t0, data))
  t0 = model(p0)
  if symmetric_init:
    assert float(jnp.max(jnp.abs(t0))) == 0.0
  at = lambda h: jax.tree.map(lambda a, b: a + h * b, p0, v)
  gaps = []
  for h in (1e-2, 5e-3):
    gaps.append(float(jnp.linalg.norm(model(at(h)) - t_lin(at(h), p0, t0))))
  np.testing.assert_allclose(gaps[0] / gaps[1], 4.0, rtol=0.05)  # quadratic in h
  h = 1e-5  # central difference: truncation ~h^2, rounding ~1e-16 / h
  jv = np.asarray(jax.jit(lambda p0, v: alg.linearize(task, p0, data)[1](v))(p0, v))
  fd = np.asarray((model(at(h)) - model(at(-h))) / (2 * h))
  np.testing.assert_allclose(jv, fd, atol=1e-8 * np.max(np.abs(jv)))
  # masked components contribute nothing
  p_masked = jax.tree.map(lambda a, b: a.at[width:].add(b[width:]), p0, v)
  np.testing.assert_allclose(np.asarray(t_lin(p_masked, p0, t0)), np.asarray(t0), atol=1e-14)


def np_linearization_gap(p, p0, width, order, alpha, target_sq):
  """alpha ||T(W) - T(W0) - J dW|| / ||T*|| of a cp model (its first `width` components), by numpy."""
  dim = np.asarray(p['factors']).shape[1]
  m = lambda q: np_outer_cp(np.asarray(q['coeffs'])[:width], np.asarray(q['factors'])[:width], order)
  delta = np.concatenate([np.asarray(p[k] - p0[k]).reshape(-1) for k in ('coeffs', 'factors')])
  jd = (np_jacobian(p0, 'cp', None, width, order) @ delta).reshape((dim,) * order)
  return alpha * np.linalg.norm(m(p) - m(p0) - jd) / np.sqrt(float(target_sq))


def test_linearization_gap_dense_implicit_and_numpy_agree():
  order, dim, width, bucket = 3, 4, 3, 4
  alpha = 3.0
  alg = make(overparam.gd, alpha=alpha, init_scale=0.7, lr=0.02)
  task = core.Task(order, 'implicit', 20)
  data = run_data(alg, task, dim, width, bucket)
  p0 = objectives.init_params(data.init_key, 'cp', bucket, dim, 0.7, F64)
  p = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(5), x.shape, F64), p0)
  signs = core.signs_vector('positive', bucket, F64)
  dense = float(linearization_gap(p, p0, signs, data, 'cp', order, alpha))
  implicit = float(linearization_gap(p, p0, signs, data, 'cp', order, alpha, dense_limit=0))
  want = np_linearization_gap(p, p0, width, order, alpha, data.target_sq)
  np.testing.assert_allclose(dense, want, rtol=1e-10)
  np.testing.assert_allclose(implicit, want, rtol=1e-6)
  # the gap a fit reports is that of its final W against its W0, with its alpha
  res = overparam.fit(alg, KEY, cp_target(order, dim), width=width, steps=20, eps=NEVER)
  assert int(res.steps) == 20
  want = np_linearization_gap(res.params, res.params0, width, order, alpha, data.target_sq)
  assert want > 1e-6
  np.testing.assert_allclose(float(res.extras['linearization_gap']), want, rtol=1e-10)


# ------------------------------------------------------------------------------------------------
# GD on T_lin == the exact lazy optimum; padding

@pytest.mark.slow
@pytest.mark.parametrize('width,momentum', [(2, 0.0), (9, 0.9)])
def test_lazy_gd_converges_to_the_exact_min_norm_solution(width, momentum):
  """Below (m d = 8 < 20) and above (36 >= 20) the threshold, GD from W0 reaches lazy_exact's
  model and its parameters (GD from W0 stays in W0 + range(J^T): the min-norm solution)."""
  order, dim = 3, 4
  t = cp_target(order, dim)
  exact = overparam.fit(overparam.lazy_exact(init_scale=1.0), KEY, t, width=width, eps=NEVER)
  lz = overparam.fit(overparam.lazy(init_scale=1.0, momentum=momentum), KEY, t, width=width, steps=4000, eps=NEVER)
  assert int(lz.steps) == 4000 and int(exact.steps) == 0
  t_exact, t_gd = np.asarray(exact.model), np.asarray(lz.model)
  scale = np.linalg.norm(t_exact)
  np.testing.assert_allclose(t_gd, t_exact, atol=1e-8 * scale)
  for a, b in zip(jax.tree.leaves(lz.params), jax.tree.leaves(exact.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  for a, b in zip(jax.tree.leaves(lz.params0), jax.tree.leaves(exact.params0)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same W0
  np.testing.assert_allclose(float(lz.rel_error), float(exact.rel_error), rtol=1e-6, atol=1e-9)
  below = width * dim < symmetric.sym_dim(dim, order)
  assert (float(exact.rel_error) > 0.1) == below
  assert int(exact.extras['tangent_rank']) == (width * dim if below else symmetric.sym_dim(dim, order))


@pytest.mark.slow
def test_padding_changes_nothing():
  """A width-m run padded to a wider bucket computes what the unpadded run (overparam.fit) computes."""
  order, dim, width, steps = 3, 4, 3, 50
  ex = make(overparam.lazy_exact, symmetric_init=True, ntk_scaling=True)
  lz = make(overparam.lazy, symmetric_init=True, ntk_scaling=True)
  t = cp_target(order, dim)
  fe = overparam.fit(ex, KEY, t, width=width, eps=NEVER)
  fl = overparam.fit(lz, KEY, t, width=width, steps=steps, eps=NEVER)
  assert int(fl.steps) == steps
  a = jax.tree.map(np.asarray, (fe.extras['tangent_rank'], fl.extras['lambda_max'], fe.model, fl.model,
                                fl.extras['linearization_gap']))
  task = core.Task(order, 'implicit', steps)
  data = run_data(lz, task, dim, width, width + 4)

  def padded(data):
    se, sl = ex.init(task, data), _run(lz, task, data, steps)
    return (se.aux['tangent_rank'], sl.aux['lambda_max'], ex.dense_model(task, se, data),
            lz.dense_model(task, sl, data), lz.extras(task, sl, data)['linearization_gap'])
  b = jax.tree.map(np.asarray, jax.jit(padded)(data))
  assert a[0] == b[0] == width * dim
  np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
  np.testing.assert_allclose(a[2], b[2], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(a[3], b[3], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(a[4], b[4], rtol=1e-8)
  assert float(a[4]) > 0  # lazy GD moved W: the gap is not trivially 0


# ------------------------------------------------------------------------------------------------
# Hyperparameters are leaves: a vmap over them is the separate fits

def test_hyperparameter_vmap_equals_separate_fits():
  """jax.vmap over lazy_exact's init_scale and over lazy's (init_scale, lr_scale, momentum) through
  overparam.fit gives the numbers of one fit per value (momentum 0 included: the batch runs it with
  the momentum state, the lone fit without)."""
  t = cp_target(3, 4)
  width = 3
  scales = np.array([0.5, 1.0, 1.5])
  lr_scales = np.array([1.0, 0.5, 1.0])
  moms = np.array([0.0, 0.9, 0.5])
  cases = [
      (lambda s, lr, mom: overparam.fit(overparam.lazy_exact(init_scale=s), KEY, t, width=width, eps=NEVER),
       (scales,)),
      (lambda s, lr, mom: overparam.fit(overparam.lazy(init_scale=s, lr_scale=lr, momentum=mom), KEY, t,
                                        width=width, steps=40, eps=NEVER), (scales, lr_scales, moms)),
  ]
  for one, args in cases:
    args = args + (np.zeros(3),) * (3 - len(args))
    batched = jax.vmap(one)(*(jnp.asarray(a, F64) for a in args))
    assert batched.model.shape == (3, 4, 4, 4)
    for i in range(3):
      sep = one(*(float(a[i]) for a in args))
      got = jax.tree.map(lambda x, i=i: np.asarray(x)[i], batched)
      assert int(got.status) == int(sep.status) and int(got.steps) == int(sep.steps)
      np.testing.assert_allclose(got.model, np.asarray(sep.model), rtol=1e-9, atol=1e-12)
      np.testing.assert_allclose(got.rel_error, float(sep.rel_error), rtol=1e-9)
      for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(sep.params)):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-9, atol=1e-12)
      assert got.extras.keys() == sep.extras.keys()
      for k, v in sep.extras.items():
        if np.issubdtype(np.asarray(v).dtype, np.integer):
          assert int(got.extras[k]) == int(v), k
        else:
          np.testing.assert_allclose(got.extras[k], float(v), rtol=1e-8, err_msg=k)
    # the values differ: the batch is not one value repeated (lazy_exact's model, the projection of T*
    # onto range(J), does not depend on init_scale for cp; its W* does)
    assert np.ptp(np.asarray(batched.params['factors']), axis=0).max() > 1e-3


# ------------------------------------------------------------------------------------------------
# The whole width grid from one factorization (lazy_exact().with_grid(widths)) == the per-width path

@pytest.mark.parametrize('parametrization', ['cp', 'power', 'homogeneous'])
@pytest.mark.parametrize('symmetric_init', [False, True])
def test_inits_are_nested(parametrization, symmetric_init):
  """The grid path rests on this: a width-m init is the first m components of the width-M init."""
  alg = make(overparam.lazy_exact, parametrization=parametrization, symmetric_init=symmetric_init)
  task = core.Task(3, 'dense', 1)
  a = alg.init_params(run_data(alg, task, 4, 3, 3))
  b = alg.init_params(run_data(alg, task, 4, 3, 7))
  assert jax.tree.leaves(b)[0].shape[0] == 7
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
    coef, s, comp = jax.jit(lstsq.factor_components, static_argnums=(1, 2, 4))(
        jnp.asarray(np.concatenate([j, b], axis=1)), m * k, k, tau, panel)
    ranks, xs = jax.jit(lstsq.prefix_min_norm, static_argnums=(3, 4, 5))(coef, s, comp, widths, k, n)
    for q, w in enumerate(widths):
      jw = j[:, :w * k]
      assert int(ranks[q]) == np.linalg.matrix_rank(jw) == [2, 6, 8, 8, 10, 12][q]
      want = np.linalg.pinv(jw) @ b[:, q]
      np.testing.assert_allclose(np.asarray(xs[q])[:w * k], want, atol=1e-10 * np.abs(want).max())
      assert np.all(np.asarray(xs[q])[w * k:] == 0)


@functools.partial(jax.jit, static_argnums=(1, 2, 5))
def _qr_kernel(j, k, widths, b, tau, slots):
  n, cols = j.shape
  m = cols // k
  rot, vec, keep = lstsq.rotate_components(j.T.reshape(m, k, n), tau)
  keep = jnp.concatenate([keep.reshape(-1), jnp.zeros((slots,), bool)])
  r, perm, pos, piv, overflow = lstsq.qr_components(rot.reshape(cols, n), keep, b, cols, tau, cols)
  ranks, y = lstsq.solve_prefixes(r, perm, pos, piv, keep, widths, cols, k)
  x = jnp.einsum('bkj,bjg->gbk', vec, y[:cols].reshape(m, k, -1)).reshape(len(widths), cols)
  return ranks, x, overflow


def _qr_prefixes(j, k, widths, b, tau, slots):
  """lstsq.rotate_components + qr_components + solve_prefixes on J (n, m k) as LazyExact's 'qr' grid
  kernel calls them, in one jitted program as the engine runs them: (ranks, x (G, m k), overflow)."""
  ranks, x, overflow = _qr_kernel(jnp.asarray(j), k, tuple(widths), jnp.asarray(b), tau, slots)
  return np.asarray(ranks), np.asarray(x), bool(overflow)


@pytest.mark.parametrize('n,slots,overflow', [
    (12, 0, False),  # wide (21 columns, 12 rows): saturation, deflations need no slots
    (30, 8, False),  # tall: the deflated columns' pivot slots are filled by the zero slots
    (30, 1, True),   # tall, two deflations, one slot: reported, not silently wrong
])
def test_qr_prefixes_match_numpy_pinv(n, slots, overflow):
  """The QR kernel (LazyExact method 'qr') on a matrix with a dependent column in every block (the
  rotation drops it), a block that repeats an earlier one (two deflated pivots) and, when wide,
  saturation: every prefix's rank is numpy's matrix_rank and its solution numpy's pinv; columns
  beyond the prefix get 0; a deflation that does not fit the slots is flagged."""
  rng = np.random.default_rng(1)
  k, m = 3, 7
  cols = []
  for i in range(m):
    blk = rng.normal(size=(n, k))
    blk[:, 1] = 0.5 * blk[:, 0] - blk[:, 2]  # a dependent column in the middle of the block
    cols.append(cols[2] if i == 5 else blk)   # block 5 repeats block 2
  j = np.concatenate(cols, axis=1)
  widths = (1, 2, 4, 5, 6, 7)
  b = rng.normal(size=(n, len(widths)))
  tau = np.sqrt(max(n, m * k) * np.finfo(np.float64).eps) * np.linalg.norm(j[:, :k], axis=0).max()
  ranks, x, flag = _qr_prefixes(j, k, widths, b, tau, slots)
  assert flag == overflow
  if overflow:
    return
  for q, w in enumerate(widths):
    jw = j[:, :w * k]
    assert ranks[q] == np.linalg.matrix_rank(jw)
    want = np.linalg.pinv(jw) @ b[:, q]
    np.testing.assert_allclose(x[q, :w * k], want, atol=1e-10 * np.abs(want).max())
    assert np.all(x[q, w * k:] == 0)
  assert list(ranks) == [2, 4, 8, 10, 10, 12]


def test_qr_prefixes_random_full_rank_blocks():
  """No dependence at all: the rotation keeps everything, no deflation; the grid's min-norm
  solutions are numpy's pinv through and past saturation."""
  rng = np.random.default_rng(2)
  n, k, m = 20, 4, 9
  j = rng.normal(size=(n, m * k))
  widths = (2, 4, 5, 6, 9)
  b = rng.normal(size=(n, len(widths)))
  tau = np.sqrt(max(n, m * k) * np.finfo(np.float64).eps) * np.linalg.norm(j[:, :k], axis=0).max()
  ranks, x, flag = _qr_prefixes(j, k, widths, b, tau, 0)
  assert not flag and list(ranks) == [8, 16, 20, 20, 20]
  for q, w in enumerate(widths):
    want = np.linalg.pinv(j[:, :w * k]) @ b[:, q]
    np.testing.assert_allclose(x[q, :w * k], want, atol=1e-10 * np.abs(want).max())


def test_qr_overflow_retry_gives_a_slot_per_column():
  """(4, 4) power at m = 9 (Alexander-Hirschowitz: rank 34 of 35 with 36 columns, no zero columns):
  with no slot the deflations do not fit, aux['overflow'] says so, and LazyExact.retry (the engine's
  rerun hook) gives the algorithm with a slot per column, whose grid matches the one-width path and
  which asks for no further retry."""
  order, dim, widths = 4, 4, (5, 8, 9)
  ref = make(overparam.lazy_exact, parametrization='power', signs='balanced', symmetric_init=True, init_scale=0.8)
  tight = dataclasses.replace(ref.with_grid(widths), slots=0)
  task = core.Task(order, 'dense', 1)
  data = run_data(ref, task, dim, 9, 9)
  st = jax.jit(lambda d: tight.init(task, d))(data)
  assert bool(np.any(np.asarray(st.aux['overflow'])))
  again = tight.retry(task, jax.tree.map(np.asarray, st))
  assert again is not None and again.slots is None and again.widths == widths
  assert ref.retry(task, jax.tree.map(np.asarray, st)) is None  # the one-width path has no slots
  s2 = jax.jit(lambda d: again.init(task, d))(data)
  assert again.retry(task, jax.tree.map(np.asarray, s2)) is None
  per = jax.tree.map(lambda *x: jnp.stack(x), *[again._width_data(data, w) for w in widths])
  s_ref = jax.jit(jax.vmap(lambda d: ref.init(task, d)))(per)
  np.testing.assert_array_equal(np.asarray(s2.aux['tangent_rank']), np.asarray(s_ref.aux['tangent_rank']))
  assert list(np.asarray(s2.aux['tangent_rank'])) == [20, 32, 34]
  np.testing.assert_allclose(np.asarray(s2.rel_err), np.asarray(s_ref.rel_err), atol=1e-8)


GRID_CASES = [  # (order, d, widths, parametrization, symmetric_init, ntk_scaling, panel_cols)
    (3, 5, (3, 6, 7, 8, 10), 'cp', True, False, 512),            # (3, 5): m = 7 defective (rank 34 < 35)
    (3, 5, (3, 6, 7, 8, 10), 'cp', False, True, 12),             # T(W0) per width, NTK scale, 4 panels
    (4, 3, (2, 4, 5, 6, 8), 'homogeneous', False, False, 512),   # (4, 3): m = 5 defective
    (4, 4, (5, 8, 9, 10), 'power', True, True, 8),               # (4, 4): m = 9 defective (rank 34)
    (4, 5, (10, 13, 14, 15, 16), 'cp', True, False, 60),         # (4, 5): m = 14 defective (rank 69)
]


@pytest.mark.parametrize('method', ['qr', 'gs'])
@pytest.mark.parametrize('order,dim,widths,parametrization,symmetric_init,ntk_scaling,panel_cols', GRID_CASES)
def test_grid_path_matches_the_per_width_path(order, dim, widths, parametrization, symmetric_init, ntk_scaling,
                                              panel_cols, method):
  """Every width of the grid, by either kernel (the LAPACK QR 'qr', the default; the block
  Gram-Schmidt 'gs', whose panel_cols applies): the same tangent rank (and numpy's rank of the dense
  Jacobian), rel_error to 1e-8, the same parameters (movement) and linearization gap, as the
  per-width min_norm_solve path (eigendecomposition of the Gram matrix) run in the same bucket."""
  big = widths[-1]
  signs = signs_of(parametrization)
  ref = make(overparam.lazy_exact, parametrization=parametrization, signs=signs, symmetric_init=symmetric_init,
             ntk_scaling=ntk_scaling, init_scale=0.8)
  grid = dataclasses.replace(ref.with_grid(widths), panel_cols=panel_cols, method=method)
  task = core.Task(order, 'dense', 1)
  data = run_data(ref, task, dim, big, big)
  per = jax.tree.map(lambda *x: jnp.stack(x), *[grid._width_data(data, m) for m in widths])

  def reference(d):
    s = ref.init(task, d)
    return s, ref.extras(task, s, d), ref.dense_model(task, s, d)
  s_ref, e_ref, t_ref = jax.jit(jax.vmap(reference))(per)
  s_grid = jax.jit(lambda d: grid.init(task, d))(data)
  e_grid = jax.jit(lambda s, d: grid.extras(task, s, d))(s_grid, data)
  t_grid = jax.jit(lambda s, d: grid.dense_model(task, s, d))(s_grid, data)
  assert t_grid.shape == (len(widths),) + (dim,) * order
  params0 = s_ref.params0['plus'] if symmetric_init else s_ref.params0
  sv = np.asarray(core.signs_vector(signs, big, F64))
  for j, m in enumerate(widths):
    p0 = jax.tree.map(lambda x: x[j], params0)
    dense_j = np_jacobian(p0, parametrization, sv, m, order)
    assert int(e_grid['tangent_rank'][j]) == int(e_ref['tangent_rank'][j]) == np.linalg.matrix_rank(dense_j)
  np.testing.assert_allclose(np.asarray(s_grid.rel_err), np.asarray(s_ref.rel_err), rtol=0, atol=1e-8)
  np.testing.assert_allclose(np.asarray(t_grid), np.asarray(t_ref), rtol=0, atol=1e-8 * float(np.sqrt(data.target_sq)))
  for a, b in zip(jax.tree.leaves(s_grid.params), jax.tree.leaves(s_ref.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(np.asarray(e_grid['linearization_gap']), np.asarray(e_ref['linearization_gap']), rtol=1e-6)
  defective = {(3, 5): 7, (4, 3): 5, (4, 4): 9, (4, 5): 14}.get((order, dim))
  if defective in widths:  # Alexander-Hirschowitz: m d >= C(d+l-1, l), yet one short of full rank
    assert int(e_grid['tangent_rank'][widths.index(defective)]) == symmetric.sym_dim(dim, order) - 1
    assert defective * dim >= symmetric.sym_dim(dim, order)


def test_power_iteration_finds_lambda_max():
  order, dim, width = 3, 4, 5
  alg = make(overparam.lazy, power_iters=200)
  task = core.Task(order, 'dense', 1)
  data = run_data(alg, task, dim, width, width)
  p0 = alg.init_params(data)
  lam = float(jax.jit(lambda p: alg.lambda_max(task, p, data))(p0))
  want = np.linalg.norm(np_jacobian(p0, 'cp', None, width, order), 2) ** 2
  np.testing.assert_allclose(lam, want, rtol=1e-8)
  # fit reports it, and its step is lr_scale / lambda_max
  res = overparam.fit(alg, KEY, cp_target(order, dim), width=width, steps=0, eps=0.5)
  np.testing.assert_allclose(float(res.extras['lambda_max']), want, rtol=1e-8)
  np.testing.assert_allclose(float(res.extras['step_size']), 1.0 / want, rtol=1e-8)


# ------------------------------------------------------------------------------------------------
# alpha-scaling approaches the lazy model

@pytest.mark.slow
def test_alpha_scaled_gd_approaches_lazy_gd():
  """GD on T(W0) + alpha (T(W) - T(W0)) with loss / alpha^2 and lazy GD with the same step and init:
  their models differ by O(1/alpha), and so does the linearization gap."""
  order, dim, width, steps = 3, 4, 4, 60
  t = cp_target(order, dim)
  lz = overparam.fit(overparam.lazy(init_scale=0.5), KEY, t, width=width, steps=steps, eps=NEVER)
  lr = float(lz.extras['step_size'])
  t_lazy = np.asarray(lz.model)
  errs, gaps = [], []
  for alpha in (100.0, 10000.0):
    res = overparam.fit(overparam.gd(lr=lr, init_scale=0.5, alpha=alpha), KEY, t, width=width, steps=steps, eps=NEVER)
    assert int(res.steps) == steps and res.coeffs.shape == (2 * width,)  # T(W0) + alpha (T(W) - T(W0))
    errs.append(np.linalg.norm(np.asarray(tensors.dense_cp(res.coeffs, res.factors, order)) - t_lazy)
                / np.linalg.norm(t_lazy))
    gaps.append(float(res.extras['linearization_gap']))
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
  need = exact_program_bytes(3, 4, 'cp', 8, (2, 9), 2)  # two seeds
  assert need >= 8 * 2 * (2 * 20 * 45 + 45 * 45)  # J and its copy, the panels' coefficients, per seed
  programs = planner.plan(c)
  assert [(p.name, p.widths, p.one) for p in programs] == [('lazy_exact', (2, 9), True)]
  assert planner.program_bytes(programs[0], 2, 8) == need
  c.memory_gb = need / 2 ** 30
  planner.check_memory(c, programs)
  c.memory_gb = 0.99 * need / 2 ** 30
  with pytest.raises(ConfigError, match=r'widths \[2, 9\] .2 runs per device, J of 20 x 45 .C.d\+l-1,l. x params. per seed'):
    planner.check_memory(c, programs)


@pytest.mark.parametrize('field,value,match', [
    ('lr_scale', 2.0, r'config.lazy.lr_scale must be a finite number > 0 and < 2, got 2.0$'),
    ('momentum', 1.0, r'config.lazy.momentum must be a finite number >= 0 and < 1, got 1.0$'),
    ('power_iters', 0, r'config.lazy.power_iters must be an integer >= 1, got 0$'),
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
