"""overparam.reduce against independent numpy computations: contraction, prune, merge (sign-aware),
refit (np.linalg.lstsq on flattened outer products), Gauss-Newton closed forms (a finite-difference
Jacobian), refine (central finite differences of a numpy loss, monotone loss), and end-to-end rank
recovery on constructed noisy wide fits (coherent components, unequal weights, orders 3 and 4)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import overparam
from overparam import reduce as rd
from overparam.errors import ConfigError, TargetError, UserError
from tests.support import np_outer_cp


def np_sym(t):
  perms = list(itertools.permutations(range(t.ndim)))
  return sum(np.transpose(t, p) for p in perms) / len(perms)


def np_loss(c, v, t_star, order):
  """Independent oracle: 1/2 ||sum_i c_i v_i^{(x)l} - T*||^2 with explicit outer products."""
  return 0.5 * float(np.sum((np_outer_cp(c, v, order) - t_star) ** 2))


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def coherent_factors(rng, r, d, mu):
  """r unit vectors with pairwise cos exactly mu."""
  q = np.linalg.qr(rng.normal(size=(d, r + 1)))[0].T
  return np.sqrt(mu) * q[:1] + np.sqrt(1 - mu) * q[1:]


def noisy_target(rng, d, order, weights, mu, noise):
  """(weights, factors, T = T_clean + Gaussian symmetric noise at `noise` * ||T_clean||)."""
  w = np.asarray(weights, float)
  a = coherent_factors(rng, len(w), d, mu)
  clean = np_outer_cp(w, a, order)
  n = np_sym(rng.normal(size=(d,) * order))
  return w, a, clean + noise * np.linalg.norm(clean) / np.linalg.norm(n) * n


WIDTH = 12  # every constructed wide fit has this width: the tests share compiled programs


def constructed_wide_fit(rng, w, a, order, perturb=0.02):
  """A width-12 fit without training: each true component split into two nearly equal pieces (one
  of them flipped, v -> -v with weight (-1)^l w, so the tensor is the same), tiny junk components,
  all factors perturbed and scaled by random norms."""
  r, d = a.shape
  n_junk = WIDTH - 2 * r
  share = rng.uniform(0.3, 0.7, size=r)
  c = np.concatenate([share * w, (1 - share) * w * (-1) ** order, 1e-6 * rng.normal(size=n_junk)])
  v = np.concatenate([a, -a, unit(rng.normal(size=(n_junk, d)))])
  v = unit(v + perturb * rng.normal(size=v.shape) / np.sqrt(d))
  s = rng.uniform(0.5, 2.0, size=len(c))
  return c / s ** order, v * s[:, None]


_refine = jax.jit(rd.refine, static_argnames=('order',))


def oracle_refine(w, a, t, order):
  """The rank-r stationary point next to the truth: refine started at (w, a)."""
  out = _refine(jnp.asarray(w), jnp.asarray(a), jnp.asarray(t) if not isinstance(t, tuple) else
                tuple(map(jnp.asarray, t)), order)
  return out


# ---------------------------------------------------------------------------------------------
# Targets.

@pytest.mark.parametrize('order', [2, 3, 4])
def test_contract_dense_and_cp_match_numpy(order):
  rng = np.random.default_rng(order)
  d, k, r = 4, 3, 5
  a, u = rng.normal(size=r), rng.normal(size=(r, d))
  t = np_outer_cp(a, u, order)
  v = rng.normal(size=(k, d))
  want = []
  for vi in v:
    x = t
    for _ in range(order - 1):
      x = np.tensordot(x, vi, axes=([x.ndim - 1], [0]))
    want.append(x)
  np.testing.assert_allclose(np.asarray(rd.contract(jnp.asarray(t), jnp.asarray(v), order)), want, rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(np.asarray(rd.contract((jnp.asarray(a), jnp.asarray(u)), jnp.asarray(v), order)), want,
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(float(rd.sq_norm((jnp.asarray(a), jnp.asarray(u)), order)), np.sum(t ** 2), rtol=1e-12)
  c, w = rng.normal(size=k), rng.normal(size=(k, d))
  for tgt in (jnp.asarray(t), (jnp.asarray(a), jnp.asarray(u))):
    res = rd.residual(jnp.asarray(c), jnp.asarray(w), tgt, order)
    dense = np.asarray(res) if not rd.is_cp(res) else np_outer_cp(np.asarray(res[0]), np.asarray(res[1]), order)
    np.testing.assert_allclose(dense, np_outer_cp(c, w, order) - t, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Prune and merge.

def test_normalize_and_prune_weights():
  rng = np.random.default_rng(1)
  order, d = 3, 4
  v = rng.normal(size=(5, d))
  v[3] = 0.0                                                      # a zero row
  c = np.array([1.0, -0.5, 2e-4, 0.3, 1e-5])
  nc, nv, keep = rd.prune(jnp.asarray(c), jnp.asarray(v), order, tol=1e-3)
  norms = np.linalg.norm(v, axis=1)
  weights = c * norms ** order
  np.testing.assert_allclose(np.asarray(nc), weights, rtol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(nv), axis=1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(np_outer_cp(np.asarray(nc), np.asarray(nv), order), np_outer_cp(c, v, order),
                             atol=1e-12)                          # the same tensor
  want = (np.abs(weights) >= 1e-3 * np.abs(weights).max()) & (weights != 0)
  np.testing.assert_array_equal(np.asarray(keep), want)
  assert not want[3] and want.sum() >= 2                          # the oracle is not trivial


@pytest.mark.parametrize('order', [3, 4])
def test_merge_duplicates_sign_aware(order):
  """(1, u), (0.5, u'), (0.3, -u'') with u' ~ u'' ~ u, and a separate (0.7, e): one cluster of three
  whose weight is 1 + 0.5 + (-1)^l 0.3, and the separate component untouched."""
  rng = np.random.default_rng(order)
  d = 5
  u = unit(rng.normal(size=d))
  e = unit(rng.normal(size=d) - (rng.normal(size=d) @ u) * u)
  e = unit(e - (e @ u) * u)
  v = np.stack([u, unit(u + 1e-3 * rng.normal(size=d)), -unit(u + 1e-3 * rng.normal(size=d)), e])
  c = np.array([1.0, 0.5, 0.3, 0.7])
  mc, mv, seed, cluster = map(np.asarray, rd.merge(jnp.asarray(c), jnp.asarray(v), order))
  np.testing.assert_array_equal(cluster, [0, 0, 0, 3])
  np.testing.assert_array_equal(seed, [True, False, False, True])
  np.testing.assert_allclose(mc[0], 1.0 + 0.5 + (-1) ** order * 0.3, rtol=1e-12)
  assert mv[0] @ u > 0.999999 and mc[3] == pytest.approx(0.7, rel=1e-12) and np.allclose(mv[3], e)
  # merged tensor = original tensor up to the spread of the directions
  merged = np_outer_cp(mc[seed], mv[seed], order)
  np.testing.assert_allclose(merged, np_outer_cp(c, v, order), atol=1e-2)
  # below the threshold nothing merges
  _, _, seed2, _ = rd.merge(jnp.asarray(c), jnp.asarray(v), order, merge_cos=1.0 - 1e-12)
  assert int(np.sum(seed2)) >= 3


def test_merge_respects_keep_and_threshold():
  order = 3
  u = np.array([1.0, 0.0, 0.0])
  near = unit(np.array([1.0, 0.2, 0.0]))                          # cos 0.98
  c = np.array([1.0, 0.8, 0.5])
  v = np.stack([u, near, u])
  keep = np.array([True, True, False])
  _, _, seed, cluster = map(np.asarray, rd.merge(jnp.asarray(c), jnp.asarray(v), order, jnp.asarray(keep), 0.99))
  np.testing.assert_array_equal(cluster, [0, 1, -1])               # 0.98 < 0.99: apart; row 2 not kept
  _, _, seed, cluster = map(np.asarray, rd.merge(jnp.asarray(c), jnp.asarray(v), order, jnp.asarray(keep), 0.95))
  np.testing.assert_array_equal(cluster, [0, 0, -1])


def test_greedy_order_takes_one_piece_of_a_split_component():
  """Component a (weight 1) split into two pieces at cos ~0.9 (weights 0.5 each), component b weight
  0.45: by weight the two pieces come first; greedy selection takes b second."""
  rng = np.random.default_rng(3)
  order, d = 3, 6
  a, b = coherent_factors(rng, 2, d, 0.2)
  t = np_outer_cp(np.array([1.0, 0.45]), np.stack([a, b]), order)
  off = unit(rng.normal(size=d) - (rng.normal(size=d) @ a) * a)
  off = unit(off - (off @ a) * a)
  p1, p2 = unit(a + 0.25 * off), unit(a - 0.25 * off)
  v = np.stack([p1, p2, b])
  perm = np.asarray(rd.greedy_order(jnp.asarray(v), jnp.asarray(t), order, jnp.ones(3, bool)))
  assert perm[1] == 2, perm
  perm = np.asarray(rd.greedy_order(jnp.asarray(v), jnp.asarray(t), order, jnp.asarray([True, False, True])))
  np.testing.assert_array_equal(perm[2], 1)                        # the non-pool row last
  # candidates uses that order: the pieces (cos 0.88 < merge_cos) stay apart, b comes second
  cands = rd.candidates(jnp.asarray([0.5, 0.5, 0.45]), jnp.asarray(v), jnp.asarray(t), order)
  assert int(cands.distinct) == 3 and abs(float(np.asarray(cands.factors)[1] @ b)) > 1 - 1e-12


# ---------------------------------------------------------------------------------------------
# Refit.

@pytest.mark.parametrize('order', [2, 3, 4])
@pytest.mark.parametrize('form', ['dense', 'cp'])
def test_refit_matches_lstsq(order, form):
  rng = np.random.default_rng(10 * order + (form == 'cp'))
  d, k = 4, 3
  a, u = rng.normal(size=5), rng.normal(size=(5, d))
  t = np_outer_cp(a, u, order) + (0.1 * np_sym(rng.normal(size=(d,) * order)) if form == 'dense' else 0)
  tgt = jnp.asarray(t) if form == 'dense' else (jnp.asarray(a), jnp.asarray(u))
  v = unit(rng.normal(size=(k, d)))
  outer = np.stack([np_outer_cp(np.ones(1), vi[None], order).ravel() for vi in v])   # (k, d^l)
  want = np.linalg.lstsq(outer.T, t.ravel(), rcond=None)[0]
  np.testing.assert_allclose(np.asarray(rd.refit_weights(jnp.asarray(v), tgt, order)), want, rtol=1e-9, atol=1e-12)
  on = np.array([True, False, True])
  want_on = np.linalg.lstsq(outer[on].T, t.ravel(), rcond=None)[0]
  got_on = np.asarray(rd.refit_weights(jnp.asarray(v), tgt, order, jnp.asarray(on)))
  np.testing.assert_allclose(got_on[on], want_on, rtol=1e-9, atol=1e-12)
  assert got_on[1] == 0.0


def test_refit_singular_gram_is_minimum_norm():
  """Two equal directions: the Gram matrix is singular; the answer is lstsq's minimum-norm one
  (the weight split equally), not a blow-up."""
  rng = np.random.default_rng(5)
  order, d = 3, 4
  v = unit(rng.normal(size=(3, d)))
  v = np.stack([v[0], v[0], v[1], v[2]])
  t = np_sym(rng.normal(size=(d,) * order))
  outer = np.stack([np_outer_cp(np.ones(1), vi[None], order).ravel() for vi in v])
  want = np.linalg.lstsq(outer.T, t.ravel(), rcond=None)[0]
  got = np.asarray(rd.refit_weights(jnp.asarray(v), jnp.asarray(t), order))
  np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
  assert abs(got[0] - got[1]) < 1e-10


# ---------------------------------------------------------------------------------------------
# Gauss-Newton and refine.

def np_jacobian(c, v, order, h=1e-6):
  """Central finite differences of vec(sum_i c_i v_i^{(x)l}) in (c, row-major V): (d^l, k + k d)."""
  x0 = np.concatenate([c, v.ravel()])
  k, d = v.shape

  def model(x):
    return np_outer_cp(x[:k], x[k:].reshape(k, d), order).ravel()

  cols = []
  for i in range(x0.size):
    e = np.zeros_like(x0)
    e[i] = h
    cols.append((model(x0 + e) - model(x0 - e)) / (2 * h))
  return np.stack(cols, axis=1)


@pytest.mark.parametrize('order', [2, 3, 4])
def test_gauss_newton_matches_finite_difference_jacobian(order):
  rng = np.random.default_rng(20 + order)
  d, k = 3, 3
  c, v = rng.normal(size=k), rng.normal(size=(k, d))
  t = np_sym(rng.normal(size=(d,) * order))
  j = np_jacobian(c, v, order)
  r = np_outer_cp(c, v, order).ravel() - t.ravel()
  res = rd.residual(jnp.asarray(c), jnp.asarray(v), jnp.asarray(t), order)
  rows = rd.contract(res, jnp.asarray(v), order)
  h, g = rd.gauss_newton(jnp.asarray(c), jnp.asarray(v), rows, jnp.eye(d), order)
  np.testing.assert_allclose(np.asarray(h), j.T @ j, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g), j.T @ r, rtol=1e-6, atol=1e-6)


def test_subspace_step_equals_full_step():
  """The damped Gauss-Newton step solved in span(V, residual rows) equals the one of all k(d + 1)
  parameters (the claim that makes refine's cost independent of d)."""
  rng = np.random.default_rng(7)
  order, d, k = 3, 7, 2
  c, v = rng.normal(size=k), unit(rng.normal(size=(k, d)))
  t = np_sym(rng.normal(size=(d,) * order))
  res = rd.residual(jnp.asarray(c), jnp.asarray(v), jnp.asarray(t), order)
  rows = rd.contract(res, jnp.asarray(v), order)
  lam = 0.3
  h, g = map(np.asarray, rd.gauss_newton(jnp.asarray(c), jnp.asarray(v), rows, jnp.eye(d), order))
  full = -np.linalg.solve(h + lam * np.eye(k + k * d), g)
  q = np.asarray(rd._subspace(jnp.asarray(v), rows, jnp.ones(k, bool)))
  assert q.shape == (d, 2 * k)
  hq, gq = map(np.asarray, rd.gauss_newton(jnp.asarray(c), jnp.asarray(v), rows, jnp.asarray(q), order))
  sub = -np.linalg.solve(hq + lam * np.eye(k + k * 2 * k), gq)
  np.testing.assert_allclose(sub[:k], full[:k], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sub[k:].reshape(k, -1) @ q.T, full[k:].reshape(k, d), rtol=1e-10, atol=1e-12)


def central_gradient(c, v, t, order, h=1e-5):
  x0 = np.concatenate([c, v.ravel()])
  k, d = v.shape
  f = lambda x: np_loss(x[:k], x[k:].reshape(k, d), t, order)
  return np.array([(f(x0 + h * e) - f(x0 - h * e)) / (2 * h) for e in np.eye(x0.size)])


@pytest.fixture(scope='module')
def noisy3():
  """Order 3, d = 7: three coherent (cos 0.4) components of weights 1, 0.6, 0.35, 3% noise."""
  rng = np.random.default_rng(11)
  return (3,) + noisy_target(rng, 7, 3, [1.0, 0.6, 0.35], 0.4, 0.03)


@pytest.mark.parametrize('form', ['dense', 'cp'])
def test_refine_reaches_a_stationary_point(noisy3, form):
  order, w, a, t = noisy3
  rng = np.random.default_rng(2)
  if form == 'cp':
    t = np_outer_cp(w, a, order)                                   # a CP target, noise-free
    tgt = (jnp.asarray(w), jnp.asarray(a))
  else:
    tgt = jnp.asarray(t)
  v0 = unit(a + 0.2 * rng.normal(size=a.shape))
  out = _refine(jnp.asarray(0.8 * w), jnp.asarray(v0), tgt, order)
  c, v = np.asarray(out.coeffs), np.asarray(out.factors)
  # a noise-free CP target's residual cancels at ~1e-8 (sq_norm): it may stop as 'stalled' there
  assert rd.STATUSES[int(out.status)] in (('converged',) if form == 'dense' else ('converged', 'stalled'))
  sq = np.sum(t ** 2)
  grad = central_gradient(c, v, t, order)
  scale = np.concatenate([np.full(len(c), np.sqrt(sq)), np.full(v.size, sq)])  # refine's relative units
  assert np.linalg.norm(grad / scale) < 1e-6, np.linalg.norm(grad / scale)
  # the start was not stationary (the check can fail), and the answer's loss is the reported one
  grad0 = central_gradient(0.8 * w, v0, t, order)
  assert np.linalg.norm(grad0 / scale) > 1e-2
  np.testing.assert_allclose(np.sqrt(2 * np_loss(c, v, t, order) / sq), float(out.rel_error), rtol=1e-6, atol=1e-7)
  if form == 'cp':
    assert float(out.rel_error) < 1e-6


def test_refine_never_increases_the_loss(noisy3):
  order, w, a, t = noisy3
  rng = np.random.default_rng(4)
  c0, v0 = jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal(size=(4, a.shape[1])))  # rank 4, far start
  losses = []
  for n in range(0, 25):
    out = _refine(c0, v0, jnp.asarray(t), order, max_iter=n)
    losses.append(np_loss(np.asarray(out.coeffs), np.asarray(out.factors), t, order))
  losses = np.array(losses)
  assert np.all(np.diff(losses) <= 1e-12 * losses[0]), np.diff(losses)
  assert losses[-1] < 0.5 * losses[0]                              # and it does move


def test_refine_active_mask_holds_inactive_components(noisy3):
  order, w, a, t = noisy3
  rng = np.random.default_rng(6)
  v0 = np.concatenate([unit(a + 0.05 * rng.normal(size=a.shape)), unit(rng.normal(size=(2, a.shape[1])))])
  on = np.array([True, True, True, False, False])
  out = _refine(jnp.asarray(np.r_[w, 0.3, 0.3]), jnp.asarray(v0), jnp.asarray(t), order, jnp.asarray(on))
  np.testing.assert_array_equal(np.asarray(out.coeffs)[~on], 0.0)
  np.testing.assert_allclose(np.asarray(out.factors)[~on], v0[~on], rtol=1e-12)
  alone = _refine(jnp.asarray(w), jnp.asarray(v0[on]), jnp.asarray(t), order)
  np.testing.assert_allclose(float(out.rel_error), float(alone.rel_error), rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# reduce, end to end.

CASES = {  # name: (seed, order, d, weights, pairwise cos, noise)
    'l3_coherent_unequal': (0, 3, 7, [1.0, 0.7, 0.5, 0.3], 0.4, 0.03),
    'l3_coherent_5pct': (1, 3, 7, [1.0, 0.8, 0.45], 0.3, 0.05),
    'l4_coherent_unequal': (2, 4, 5, [1.0, 0.6, 0.4], 0.5, 0.03),
}


@pytest.fixture(scope='module', params=sorted(CASES))
def noisy_case(request):
  seed, order, d, weights, mu, noise = CASES[request.param]
  rng = np.random.default_rng(100 + seed)
  w, a, t = noisy_target(rng, d, order, weights, mu, noise)
  c, v = constructed_wide_fit(rng, w, a, order)
  best = oracle_refine(w, a, t, order)
  return order, w, a, t, c, v, best


def test_reduce_recovers_rank_and_the_local_optimum(noisy_case):
  order, w, a, t, c, v, best = noisy_case
  out = rd.reduce(c, v, t)
  assert out.rank == len(w), (out.rank, out.rule, out.rel_errors)
  assert out.status == 'converged' and out.grad_norm <= 1e-8
  np.testing.assert_allclose(out.rel_error, float(best.rel_error), rtol=1e-7)
  np.testing.assert_allclose(out.rel_error, np.sqrt(2 * np_loss(out.coeffs, out.factors, t, order) / np.sum(t ** 2)),
                             rtol=1e-10)
  cos = np.abs(out.factors @ a.T)
  assert np.all(cos.max(axis=0) > 0.99), cos
  np.testing.assert_allclose(np.linalg.norm(out.factors, axis=1), 1.0, rtol=1e-12)
  assert out.distinct == len(w)                                    # the split pieces merged
  assert out.rel_errors.shape[0] >= out.rank and out.wide_rel_error < 0.2


def overfitted_wide_fit(rng, w, a, t, order, extra):
  """A wide fit that has fitted noise: the rank-r optimum, then `extra` components each fitted (rank-1
  refine from a random direction) to the residual left by the others, then zero rows up to WIDTH."""
  best = oracle_refine(w, a, t, order)
  c, v = list(np.asarray(best.coeffs)), list(np.asarray(best.factors))
  d = a.shape[1]
  for _ in range(extra):
    res = t - np_outer_cp(np.array(c), np.array(v), order)
    u0 = unit(rng.normal(size=(1, d)))
    one = _refine(rd.refit_weights(jnp.asarray(u0), jnp.asarray(res), order), jnp.asarray(u0), jnp.asarray(res), order)
    c.append(float(one.coeffs[0]))
    v.append(np.asarray(one.factors[0]))
  n = WIDTH - len(c)
  return np.r_[c, np.zeros(n)], np.concatenate([np.array(v), unit(rng.normal(size=(n, d)))]), best


def test_reduce_noise_rule_sees_through_an_overfitted_wide_fit():
  """On a wide fit that has fitted noise with 6 extra components (its residual well below the best
  rank-r one), the fit rule alone picks a larger rank; the noise rule finds r."""
  rng = np.random.default_rng(21)
  order, d = 3, 7
  w, a, t = noisy_target(rng, d, order, [1.0, 0.7, 0.5], 0.4, 0.05)
  c, v, best = overfitted_wide_fit(rng, w, a, t, order, extra=6)
  wide_err = np.linalg.norm(np_outer_cp(c, v, order) - t) / np.linalg.norm(t)
  assert wide_err < 0.8 * float(best.rel_error)                   # it has over-fitted
  out = rd.reduce(c, v, t)
  assert out.rank == 3 and out.rule == 'noise', (out.rank, out.rule, out.rel_errors)
  np.testing.assert_allclose(out.rel_error, float(best.rel_error), rtol=1e-6)
  fit_only = rd.reduce(c, v, t, noise_margin=None)
  assert fit_only.rank > 3 and fit_only.rule == 'fit', (fit_only.rank, fit_only.rule)


def test_reduce_cp_target_noise_free():
  rng = np.random.default_rng(8)
  order, d = 3, 7
  w = np.array([2.0, -1.0, 0.6])
  a = coherent_factors(rng, 3, d, 0.3)
  c, v = constructed_wide_fit(rng, w, a, order, perturb=0.01)
  out = rd.reduce(c, v, (w, a), order)
  assert out.rank == 3 and out.rule == 'fit' and out.rel_error < 1e-6 and np.isnan(out.noise_gain)
  dense = rd.reduce(c, v, np_outer_cp(w, a, order))               # the same tensor, dense
  assert dense.rank == 3 and dense.rel_error < 1e-7                # zero residual: rel_error ~ gtol
  order_of = np.argmax(np.abs(out.factors @ a.T), axis=1)
  signs = np.sign(np.sum(out.factors * a[order_of], axis=1)) ** order
  np.testing.assert_allclose(out.coeffs * signs, w[order_of], rtol=1e-5)


def test_reduce_given_rank_above_the_clusters():
  """A wide fit that missed the weakest true component: 3 clusters, so rank=None says 3; rank=4 starts
  the extra component from a pruned one and finds the missing component (the rank-4 optimum)."""
  rng = np.random.default_rng(9)
  order, d = 3, 7
  w, a, t = noisy_target(rng, d, order, [1.0, 0.7, 0.5, 0.3], 0.3, 0.03)
  c, v = constructed_wide_fit(rng, w[:3], a[:3], order)
  auto = rd.reduce(c, v, t)
  assert auto.rank == 3 and auto.distinct == 3
  above = rd.reduce(c, v, t, rank=4)
  best = oracle_refine(w, a, t, order)
  assert above.rule == 'given' and above.coeffs.shape == (4,) and above.factors.shape == (4, d)
  assert above.status == 'converged' and above.rel_error < 0.5 * auto.rel_error
  np.testing.assert_allclose(above.rel_error, float(best.rel_error), rtol=1e-6)
  assert np.max(np.abs(above.factors @ a[3])) > 0.99
  grad = central_gradient(above.coeffs, above.factors, t, order)
  sq = np.sum(t ** 2)
  scale = np.concatenate([np.full(4, np.sqrt(sq)), np.full(4 * d, sq)])
  assert np.linalg.norm(grad / scale) < 1e-6


def test_reduce_batched_fits_match_single_calls(noisy3):
  """What decompose_many needs: fit_first vmapped over a batch of (candidates, target) and ranks."""
  order, w, a, t = noisy3
  rng = np.random.default_rng(12)
  t2 = t + 0.01 * np_sym(rng.normal(size=t.shape))
  cands = []
  for tt in (t, t2):
    c, v = constructed_wide_fit(rng, w, a, order)
    full = rd.candidates(jnp.asarray(c), jnp.asarray(v), jnp.asarray(tt), order)
    cands.append(rd.Candidates(full.coeffs[:4], full.factors[:4], full.distinct))
  batch = jax.tree.map(lambda *x: jnp.stack(x), *cands)
  ts = jnp.stack([jnp.asarray(t), jnp.asarray(t2)])
  fit = jax.jit(jax.vmap(rd.fit_first, in_axes=(0, 0, None, 0)), static_argnames=('order',))
  out = fit(batch, ts, order, jnp.array([3, 2]))
  for i, (tt, k) in enumerate(zip((t, t2), (3, 2))):
    one = rd._fit_jit(cands[i], jnp.asarray(tt), order, k)
    np.testing.assert_allclose(float(out.rel_error[i]), float(one.rel_error), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(out.factors[i]), np.asarray(one.factors), atol=1e-9)


def np_best_rank1_gain(n, rng, starts=8, iters=300):
  """Independent oracle: max over random starts of <N, u^{(x)3}>^2 / ||N||^2 at the fixed point of the
  shifted symmetric power iteration u <- N(u, u, .) + alpha u (normalized), alpha = 3 ||N||_F (a
  shift that makes the iteration monotone for the cubic form)."""
  best, alpha = 0.0, 3 * np.linalg.norm(n)
  for _ in range(starts):
    u = unit(rng.normal(size=n.shape[0]))
    for _ in range(iters):
      u = unit(np.einsum('ijk,j,k->i', n, u, u) + alpha * u)
    best = max(best, np.einsum('ijk,i,j,k->', n, u, u, u) ** 2)
  return best / np.sum(n ** 2)


def test_noise_gain_matches_a_power_iteration_estimate():
  """noise_gain(d=7, l=3) (the default estimate reduce uses) against the same expectation estimated
  independently: numpy's own Gaussian symmetric tensors, rank-1 optima by shifted power iteration.
  Both are means over 8 and 24 draws (spread ~20% per draw), hence the 25% tolerance; and the
  refined rank-1 fit's gain is exactly <N, u^l>^2 / ||N||^2 at its u."""
  rng = np.random.default_rng(13)
  order, d = 3, 7
  oracle = np.mean([np_best_rank1_gain(np_sym(rng.normal(size=(d,) * order)), rng) for _ in range(24)])
  got = rd.noise_gain(jax.random.PRNGKey(0), d, order)
  assert 0.75 * oracle < got < 1.25 * oracle, (got, oracle)
  n = np_sym(rng.normal(size=(d,) * order))
  u0 = unit(rng.normal(size=(1, d)))
  fit = _refine(rd.refit_weights(jnp.asarray(u0), jnp.asarray(n), order), jnp.asarray(u0), jnp.asarray(n), order)
  u = np.asarray(fit.factors)[0]
  proj = np.einsum('ijk,i,j,k->', n, u, u, u)
  np.testing.assert_allclose(1 - float(fit.rel_error) ** 2, proj ** 2 / np.sum(n ** 2), rtol=1e-8)


def test_noise_share_dof_correction():
  dof = 56  # C(6 + 2, 3)
  assert rd.noise_share(0.1, 1, 6, 3) == pytest.approx(0.1)
  assert rd.noise_share(0.1, 3, 6, 3) == pytest.approx(0.1 * dof / (dof - 12))
  assert rd.noise_share(0.4, 9, 6, 3) == 0.5


# ---------------------------------------------------------------------------------------------
# Errors.

def test_reduce_rejects_bad_input_with_named_errors(noisy3):
  order, w, a, t = noisy3
  c, v = w, a
  cases = [
      (dict(rank=4), ConfigError, r'rank must be None or an integer in \[1, 3\]'),
      (dict(rank=0), ConfigError, 'rank'),
      (dict(rank=2.0), ConfigError, 'rank'),
      (dict(rank=True), ConfigError, 'rank'),
      (dict(merge_cos=0.0), ConfigError, r'merge_cos must be a number in \(0, 1\]'),
      (dict(prune_tol=1.0), ConfigError, 'prune_tol'),
      (dict(gtol=-1.0), ConfigError, 'gtol'),
      (dict(max_iter=0), ConfigError, 'max_iter'),
      (dict(noise_margin=0.0), ConfigError, 'noise_margin'),
      (dict(rcond=0.0), ConfigError, 'rcond'),
      (dict(key=np.zeros(3)), ConfigError, 'key'),
      (dict(order=4), TargetError, 'shape'),
      (dict(order=1), ConfigError, 'order'),
  ]
  for kwargs, error, msg in cases:
    with pytest.raises(error, match=msg):
      rd.reduce(c, v, t, **kwargs)
  bad_fits = [((c[:2], v), 'coeffs and factors'), ((np.r_[c[:2], np.nan], v), 'coeffs has 1 non-finite'),
              ((c, v[:, :2]), 'shape')]
  for (cc, vv), msg in bad_fits:
    with pytest.raises(UserError, match=msg):
      rd.reduce(cc, vv, t)
  asym = t.copy()
  asym[0, 1, 2] += 0.1
  bad_targets = [(asym, {}, 'not symmetric'), (np.zeros_like(t), {}, 'zero'), ((w, a), {}, 'order is required'),
                 ((w, a[:, :3]), {'order': 3}, 'd=3'), ((w[:2], a), {'order': 3}, 'shapes'),
                 ('x', {}, 'real numeric')]
  for tt, kw, msg in bad_targets:
    with pytest.raises(UserError, match=msg):
      rd.reduce(c, v, tt, **kw)
  with pytest.raises(ConfigError, match='weight 0'):
    rd.reduce(np.zeros(3), v, t)
  assert issubclass(ConfigError, UserError) and issubclass(TargetError, UserError)


# ---------------------------------------------------------------------------------------------
# The real pipeline.

@pytest.mark.slow
def test_decompose_then_reduce_recovers_rank():
  rng = np.random.default_rng(30)
  order, d = 3, 8
  w, a, t = noisy_target(rng, d, order, [1.0, 0.6, 0.4], 0.3, 0.03)
  res = overparam.decompose(t, 12, eps=0.01, x64=True, steps=4000)
  out = rd.reduce(res.coeffs, res.factors, t)
  best = oracle_refine(w, a, t, order)
  assert out.rank == 3, (out.rank, out.rule, out.rel_errors, res.rel_error)
  np.testing.assert_allclose(out.rel_error, float(best.rel_error), rtol=1e-6)
  assert out.rel_error > res.rel_error                             # the wide fit had fitted noise
