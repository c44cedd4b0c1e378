"""From an over-parameterized fit to a rank-k symmetric decomposition: prune, merge, refit, refine.

A wide fit T = sum_{i<m} c_i v_i^{(x)l} (coeffs (m,), factors (m, d)) of a symmetric target T* carries
duplicated, tiny and noise-fitting components. `reduce` turns it into a rank-k decomposition:

  prune          weights w_i = c_i ||v_i||^l on unit factors; drop |w_i| < prune_tol * max_j |w_j|
  merge          one component per cluster of directions with |cos| >= merge_cos (sign-aware)
  refit_weights  least-squares weights for fixed unit factors V: (V V^T)^{.l} c = b, b_i = T*(v_i, ..., v_i)
  refine         Levenberg-Marquardt on (c, V) to a stationary point of 1/2 ||T(c, V) - T*||_F^2

A target (here and below) is a dense symmetric array (d,)*l or a CP pair (coeffs (r,), factors (r, d))
meaning sum_j coeffs_j factors_j^{(x)l}, never formed densely. Both enter only through `contract`
(T(v, ..., v, .) for a batch of vectors) and `sq_norm`, so a step costs O(k d^l) on a dense target and
O(k (k + r) d) on a CP one.

Every function but `reduce` and `noise_gain` is pure and jittable (`order` static) with fixed output
shapes: pruning and selection are masks (`active`, (m,) bool), not shorter arrays, so they also vmap
over a batch of fits or targets. `reduce` is the host-side driver (validation, the rank rule,
float64, compact (k,) output); `noise_gain` a host loop over jitted fits.
"""

import functools
import math
import numbers
from typing import NamedTuple, Optional, Tuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve

from overparam import tensors
from overparam.errors import ConfigError, TargetError

TargetLike = Union[jax.Array, Tuple[jax.Array, jax.Array]]

STATUSES = ('converged', 'max_iter', 'stalled')  # Refined.status indexes this tuple
_LAM_INIT, _LAM_MIN, _LAM_MAX = 1e-3, 1e-12, 1e16  # Levenberg-Marquardt damping (relative to D, see refine)
SYM_TOL = 1e-5  # a dense target's accepted asymmetry, relative to max|T| (as tensors.load_target_file)


# ---------------------------------------------------------------------------------------------
# Targets: contraction and norm, shared by the dense and the CP form.

def is_cp(tensor) -> bool:
  """True for a CP pair (coeffs (r,), factors (r, d)), False for a dense array (d,)*l."""
  return isinstance(tensor, (tuple, list))


def contract(tensor: TargetLike, vectors: jax.Array, order: int) -> jax.Array:
  """Rows T(v_i, ..., v_i, .) with l - 1 slots filled: vectors (k, d) -> (k, d).

  Dense T (d,)*l, symmetric: T_(1) times the row-wise Khatri-Rao power v_i^{(x)(l-1)}, O(k d^l).
  CP T = sum_j a_j u_j^{(x)l}: sum_j a_j (u_j . v_i)^{l-1} u_j, i.e. ((V U^T)^{.(l-1)} diag(a)) U, O(k r d).
  T(v_i, ..., v_i) is then the row's dot product with v_i.
  """
  if is_cp(tensor):
    a, u = tensor
    return ((vectors @ u.T) ** (order - 1) * a[None, :]) @ u
  k, d = vectors.shape
  kr = vectors
  for _ in range(order - 2):
    kr = (kr[:, :, None] * vectors[:, None, :]).reshape(k, -1)
  return kr @ tensor.reshape(d, -1).T


def sq_norm(tensor: TargetLike, order: int) -> jax.Array:
  """||T||_F^2: the sum of squares (dense) or a^T (U U^T)^{.l} a (CP; cancels below ~1e-8 relative in
  float64 when T is a near-zero difference of CP tensors)."""
  if is_cp(tensor):
    a, u = tensor
    return a @ (u @ u.T) ** order @ a
  return jnp.sum(tensor * tensor)


def residual(coeffs: jax.Array, factors: jax.Array, target: TargetLike, order: int) -> TargetLike:
  """T(c, V) - T*, in the target's form: a dense (d,)*l array, or the CP pair ([c, -a], [V; U])."""
  if is_cp(target):
    a, u = target
    return jnp.concatenate([coeffs, -a]), jnp.concatenate([factors, u])
  return tensors.dense_cp(coeffs, factors, order) - target


# ---------------------------------------------------------------------------------------------
# Prune and merge.

def normalize(coeffs: jax.Array, factors: jax.Array, order: int) -> Tuple[jax.Array, jax.Array]:
  """The same tensor with unit factors: (c_i ||v_i||^l, v_i / ||v_i||). A zero row gets weight 0 and
  the direction e_{i mod d}. coeffs (m,), factors (m, d) -> the same shapes."""
  chex.assert_rank([coeffs, factors], [1, 2])
  m, d = factors.shape
  n = jnp.linalg.norm(factors, axis=1)
  ok = n > 0
  unit = factors / jnp.where(ok, n, 1.0)[:, None]
  basis = jnp.eye(d, dtype=factors.dtype)[jnp.arange(m) % d]
  return jnp.where(ok, coeffs * n ** order, 0.0), jnp.where(ok[:, None], unit, basis)


def prune(coeffs: jax.Array, factors: jax.Array, order: int, tol: float = 1e-3):
  """Normalizes (see `normalize`) and marks the components worth keeping.

  Weight of component i: |w_i| = |c_i| ||v_i||^l, its Frobenius norm. keep_i = |w_i| >= tol * max_j |w_j|
  and w_i != 0. Dropping component i changes T by at most |w_i| in Frobenius norm, so the pruned fit is
  within sum of the dropped |w_i| <= m tol max|w| of the wide one. Default tol = 1e-3: stray
  components of a beyond_lazy fit weigh ~1e-6 ||T*|| (init_scale^2), re-initialized ones < 1e-4.
  Returns (coeffs (m,), factors (m, d) unit rows, keep (m,) bool); all zero weights keep nothing.
  """
  c, v = normalize(coeffs, factors, order)
  w = jnp.abs(c)
  return c, v, (w >= tol * jnp.max(w)) & (w > 0)


def _sign(x):
  return jnp.where(x < 0, -1.0, 1.0).astype(x.dtype)


def merge(coeffs: jax.Array, factors: jax.Array, order: int, keep: Optional[jax.Array] = None,
          merge_cos: float = 0.95):
  """Clusters the kept components by direction and merges each cluster into one component.

  Since c (-u)^{(x)l} = (-1)^l c u^{(x)l}, u and -u are one direction: clusters use |cos|. Greedy,
  strongest first: the heaviest unassigned kept component seeds a cluster and takes every unassigned
  kept j with |v_seed . v_j| >= merge_cos (not transitive: members are close to the seed). Member j is
  aligned to the seed, s_j = sign(v_seed . v_j), v_j -> s_j v_j, w_j -> s_j^l w_j (odd l flips the
  weight, even l keeps it). The merged component: direction sum_j |w_j| s_j v_j renormalized (the
  weight-aligned average), weight sum_j s_j^l w_j (refit_weights corrects it). Default merge_cos =
  0.95: duplicates of a converged fit agree to ~1 - 1e-4; distinct components of coherent targets
  (pairwise cos <= ~0.8) stay apart.

  coeffs (m,), factors (m, d) (normalized first), keep (m,) bool (default all). Returns
  (coeffs (m,), factors (m, d), seed (m,) bool, cluster (m,) int): row i is the merged component
  where seed_i, else row i of the normalized input; cluster_j = index of j's seed, -1 if not kept.
  """
  c, v = normalize(coeffs, factors, order)
  m = c.shape[0]
  keep = jnp.ones((m,), bool) if keep is None else keep
  cos = v @ v.T
  close = jnp.abs(cos) >= merge_cos
  by_weight = jnp.argsort(jnp.where(keep, -jnp.abs(c), jnp.inf))

  def assign(t, cluster):
    i = by_weight[t]
    free = keep & (cluster < 0)
    members = free & close[i] & free[i]
    return jnp.where(members, i.astype(cluster.dtype), cluster)

  cluster = jax.lax.fori_loop(0, m, assign, jnp.full((m,), -1, jnp.int32))
  seed = cluster == jnp.arange(m)
  member = (cluster[None, :] == jnp.arange(m)[:, None]).astype(c.dtype)  # [i, j]: j in i's cluster
  s = _sign(cos)
  aligned_w = member * s ** order * c[None, :]                            # s_ij^l w_j
  direction = (member * jnp.abs(c)[None, :] * s) @ v
  norm = jnp.linalg.norm(direction, axis=1, keepdims=True)
  merged_v = jnp.where(seed[:, None] & (norm > 0), direction / jnp.where(norm > 0, norm, 1.0), v)
  merged_c = jnp.where(seed, jnp.sum(aligned_w, axis=1), c)
  return merged_c, merged_v, seed, cluster


# ---------------------------------------------------------------------------------------------
# Refit and refine.

def _active(active, k):
  return jnp.ones((k,), bool) if active is None else active


def refit_weights(factors: jax.Array, target: TargetLike, order: int, active: Optional[jax.Array] = None,
                  rcond: float = 1e-7) -> jax.Array:
  """Least-squares weights for fixed factors: argmin_c ||sum_i c_i v_i^{(x)l} - T*||_F.

  Normal equations P c = b with P = (V V^T)^{.l} (the Gram matrix of the v_i^{(x)l}) and
  b_i = <T*, v_i^{(x)l}> = T*(v_i, ..., v_i) (dense: the contraction; CP: ((V U^T)^{.l} a)_i), solved
  by the pseudo-inverse of P: eigenvalues below rcond^2 * max are dropped, i.e. singular values of the
  (k, d^l) matrix of outer products below rcond * max (default 1e-7: P squares the conditioning, so
  ~1e-8 is what float64 resolves). Nearly equal directions thus share their weight (minimum norm)
  instead of blowing up. factors (k, d), any nonzero rows; active (k,) bool (default all): inactive
  components get weight 0 and do not enter the fit. Returns coeffs (k,).
  """
  p, b = _normal_equations(factors, target, order)
  return _pinv_solve(p, b, _active(active, factors.shape[0]), rcond)


def _normal_equations(factors, target, order):
  """P = (V V^T)^{.l} (k, k) and b_i = T*(v_i, ..., v_i) (k,)."""
  return (factors @ factors.T) ** order, jnp.sum(contract(target, factors, order) * factors, axis=1)


def _pinv_solve(p, b, on, rcond):
  """P^+ b restricted to the active rows and columns (inactive entries 0), eigenvalues of P below
  rcond^2 * max dropped."""
  p = jnp.where(on[:, None] & on[None, :], p, 0.0) + jnp.diag(jnp.where(on, 0.0, 1.0).astype(p.dtype))
  lam, u = jnp.linalg.eigh(p)
  inv = jnp.where(lam > rcond ** 2 * jnp.max(lam), 1.0 / jnp.where(lam > 0, lam, 1.0), 0.0)
  return jnp.where(on, u @ (inv * (u.T @ jnp.where(on, b, 0.0))), 0.0)


def greedy_order(factors: jax.Array, target: TargetLike, order: int, pool: jax.Array,
                 rcond: float = 1e-7) -> jax.Array:
  """Forward selection (orthogonal matching pursuit) of the pool's components by least squares.

  Step t adds the pool component that, refitted (refit_weights) together with the t already chosen,
  explains the most of ||T*||^2, i.e. maximizes b_S^T P_S^+ b_S over S = chosen + {i}. A split
  component (two nearby pieces) then yields one piece before the next distinct direction, where an
  order by weight would list both pieces first. factors (m, d) unit rows, pool (m,) bool. Returns a
  permutation (m,) of arange(m): the pool in selection order, then the rest in their input order.
  """
  m = factors.shape[0]
  p, b = _normal_equations(factors, target, order)
  eye = jnp.eye(m, dtype=bool)

  def explained(on):
    return b @ _pinv_solve(p, b, on, rcond)

  def step(t, state):
    chosen, perm = state
    gain = jax.vmap(lambda i: explained(chosen | eye[i]))(jnp.arange(m))
    gain = jnp.where(pool & ~chosen, gain, -jnp.inf)
    i = jnp.argmax(gain)
    pick = jnp.isfinite(gain[i])
    return chosen | (eye[i] & pick), jnp.where(pick, perm.at[t].set(i.astype(perm.dtype)), perm)

  chosen, perm = jax.lax.fori_loop(0, m, step, (jnp.zeros((m,), bool), jnp.zeros((m,), jnp.int32)))
  n = jnp.sum(pool)
  rest = jnp.argsort(jnp.where(pool, m, 0) + jnp.arange(m))  # non-pool rows first, in input order
  return jnp.where(jnp.arange(m) < n, perm, jnp.roll(rest, n)).astype(jnp.int32)


def gauss_newton(coeffs: jax.Array, factors: jax.Array, res_rows: jax.Array, basis: jax.Array, order: int):
  """J^T J and J^T r of the residual r = T(c, V) - T* (as a d^l vector), in coordinates (c, V Q).

  coeffs (k,), factors (k, d), res_rows (k, d) = contract(r, V) (rows r(v_i, ..., v_i, .)), basis Q
  (d, s) orthonormal columns. With G = V V^T and (.) entrywise powers, the closed forms are
    J_c^T J_c = G^{.l};  [J_c^T J_v]_{i, (j, a)} = l c_j G_ij^{l-1} (V Q)_{ia};
    [J_v^T J_v]_{(i, a), (j, b)} = l c_i c_j (G_ij^{l-1} delta_ab + (l - 1) G_ij^{l-2} (VQ)_{ja} (VQ)_{ib});
    J_c^T r = (r(v_i^{(x)l}))_i;  J_v^T r = l c_i r(v_i, ..., v_i, .) Q,
  so no d^l Jacobian is formed. If span(Q) contains the rows of V and of res_rows, the Gauss-Newton
  step of the full problem lies in (c, V Q) coordinates (the matrix keeps that subspace invariant).
  Returns H (n, n), g (n,) with n = k + k s, parameters ordered (c, row-major V Q).
  """
  l = order
  c, v = coeffs, factors
  k = c.shape[0]
  vs = v @ basis
  s = vs.shape[1]
  gram = v @ v.T
  g1 = gram ** (l - 1)
  g2 = gram ** (l - 2)
  h_cc = g1 * gram
  h_cv = (l * c[None, :] * g1)[:, :, None] * vs[:, None, :]                                   # [i, j, a]
  h_vv = (l * c[:, None] * c[None, :])[:, None, :, None] * (
      g1[:, None, :, None] * jnp.eye(s, dtype=v.dtype)[None, :, None, :]
      + (l - 1) * g2[:, None, :, None] * vs.T[None, :, :, None] * vs[:, None, None, :])      # [i, a, j, b]
  h_cv = h_cv.reshape(k, k * s)
  h = jnp.block([[h_cc, h_cv], [h_cv.T, h_vv.reshape(k * s, k * s)]])
  g = jnp.concatenate([jnp.sum(res_rows * v, axis=1), (l * c[:, None] * (res_rows @ basis)).reshape(-1)])
  return h, g


class Refined(NamedTuple):
  """refine's answer. coeffs (k,), factors (k, d) unit rows (inactive components: weight 0);
  rel_error ||T - T*||_F / ||T*||_F; grad_norm: the relative gradient norm (see refine);
  iterations: Levenberg-Marquardt iterations (accepted or not); status: index into STATUSES."""
  coeffs: jax.Array
  factors: jax.Array
  rel_error: jax.Array
  grad_norm: jax.Array
  iterations: jax.Array
  status: jax.Array


class _State(NamedTuple):
  c: jax.Array
  v: jax.Array
  f: jax.Array
  rows: jax.Array
  lam: jax.Array
  nu: jax.Array
  it: jax.Array


def _evaluate(c, v, target, order):
  """1/2 ||r||^2 and the rows r(v_i, ..., v_i, .) of the residual r = T(c, V) - T*."""
  r = residual(c, v, target, order)
  return 0.5 * sq_norm(r, order), contract(r, v, order)


def _grad_norm(c, v, rows, on, sq, order):
  g_c = jnp.where(on, jnp.sum(rows * v, axis=1), 0.0)
  g_v = order * c[:, None] * rows
  return jnp.sqrt(jnp.sum(g_c ** 2) / sq + jnp.sum(g_v ** 2) / sq ** 2)


def _subspace(v, rows, on):
  """Orthonormal Q (d, min(d, 2k)) whose span holds the active rows of V and of rows."""
  n = jnp.linalg.norm(rows, axis=1, keepdims=True)
  cols = jnp.concatenate([v, rows / jnp.where(n > 0, n, 1.0)]) * jnp.concatenate([on, on])[:, None]
  return jnp.linalg.qr(cols.T)[0]


def refine(coeffs: jax.Array, factors: jax.Array, target: TargetLike, order: int,
           active: Optional[jax.Array] = None, gtol: float = 1e-8, max_iter: int = 200) -> Refined:
  """Refines (c, V) to a stationary point of f = 1/2 ||T(c, V) - T*||_F^2 for the symmetric model.

  Levenberg-Marquardt: solve (H + lam D) delta = -g with H, g from gauss_newton in the subspace of the
  current factors and residual rows (exact: at most k(2k + 1) unknowns whatever d), D = 1 on the weights
  and l c_i^2 (+ a 1e-12 l ||T*||^2 floor) on factor i (the scale of H's diagonal blocks); take the
  step if f decreases, then renormalize the factors (the tensor is unchanged). lam starts at 1e-3 and
  follows Nielsen's rule (shrink by max(1/3, 1 - (2 rho - 1)^3) on success, rho = actual / predicted
  decrease; grow by 2, 4, 8, ... on failure). f never increases.

  Stops when the relative gradient norm
    grad_norm = sqrt(||df/dc||^2 / ||T*||^2 + ||df/dV||^2 / ||T*||^4)
  (the gradient of 1/2 rel_error^2 with respect to (c / ||T*||, V) at unit V: scale free) is <= gtol
  (status converged), after max_iter iterations (max_iter), or when lam exceeds 1e16 (stalled: no
  step decreases f at this precision). Default gtol 1e-8: near a stationary point f - f_stat ~
  grad_norm^2 / (2 h) ||T*||^2 with h the smallest curvature of the normalized problem, negligible for
  a noisy target; f resolves a step only down to grad_norm ~ sqrt(1e-16 * rel_error^2) in float64, so
  much smaller gtol stalls on noisy targets. At zero residual (an exact low-rank target) rel_error is
  ~grad_norm at the stop, and a CP target's residual norm cancels at ~1e-8 relative: 'stalled' there
  means converged to that precision. float32 inputs run in float32: use gtol ~1e-4.

  coeffs (k,), factors (k, d) (normalized first); active (k,) bool: inactive components are held at
  weight 0 (their rows are returned unchanged). gtol and max_iter may be traced. Returns Refined.
  """
  c, v = normalize(coeffs, factors, order)
  k = c.shape[0]
  on = _active(active, k)
  c = jnp.where(on, c, 0.0)
  sq = sq_norm(target, order)
  f, rows = _evaluate(c, v, target, order)
  dtype = c.dtype

  def grad_norm(st):
    return _grad_norm(st.c, st.v, st.rows, on, sq, order)

  def cond(st):
    return (st.it < max_iter) & (grad_norm(st) > gtol) & (st.lam < _LAM_MAX)

  def body(st):
    q = _subspace(st.v, st.rows, on)
    s = q.shape[1]
    h, g = gauss_newton(st.c, st.v, st.rows, q, order)
    p_on = jnp.concatenate([on, jnp.repeat(on, s)])
    h = jnp.where(p_on[:, None] & p_on[None, :], h, 0.0) + jnp.diag(jnp.where(p_on, 0.0, 1.0).astype(dtype))
    g = jnp.where(p_on, g, 0.0)
    damp = jnp.concatenate([jnp.ones((k,), dtype), jnp.repeat(order * st.c ** 2 + 1e-12 * order * sq, s)])
    delta = cho_solve(cho_factor(h + st.lam * jnp.diag(damp)), -g)
    predicted = -g @ delta - 0.5 * delta @ h @ delta
    c_t, v_t = normalize(st.c + delta[:k], st.v + delta[k:].reshape(k, s) @ q.T, order)
    c_t = jnp.where(on, c_t, 0.0)
    v_t = jnp.where(on[:, None], v_t, st.v)
    f_t, rows_t = _evaluate(c_t, v_t, target, order)
    ok = jnp.isfinite(f_t) & (f_t < st.f)
    rho = (st.f - f_t) / jnp.maximum(predicted, jnp.finfo(dtype).tiny)
    lam = jnp.where(ok, st.lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), st.lam * st.nu)
    pick = lambda new, old: jnp.where(ok, new, old)
    return _State(pick(c_t, st.c), pick(v_t, st.v), pick(f_t, st.f), pick(rows_t, st.rows),
                  jnp.maximum(lam, _LAM_MIN), jnp.where(ok, 2.0, 2.0 * st.nu), st.it + 1)

  st = jax.lax.while_loop(cond, body, _State(c, v, f, rows, jnp.asarray(_LAM_INIT, dtype),
                                             jnp.asarray(2.0, dtype), jnp.asarray(0, jnp.int32)))
  gn = grad_norm(st)
  status = jnp.where(gn <= gtol, 0, jnp.where(st.lam >= _LAM_MAX, 2, 1))
  rel = jnp.sqrt(jnp.maximum(2.0 * st.f, 0.0) / sq)
  return Refined(st.c, st.v, rel, gn, st.it, status)


class Candidates(NamedTuple):
  """The wide fit as an ordered list of starting components for every rank.

  coeffs (m,), factors (m, d) unit rows: first the merged clusters in greedy_order (the best single
  component, then the one that adds most to it, ...), then the pruned components, then the non-seed
  cluster members (the latter two by decreasing |weight|, with their own unmerged directions). Rank k
  starts from the first k rows. distinct: the number of clusters (a scalar int array).
  """
  coeffs: jax.Array
  factors: jax.Array
  distinct: jax.Array


def candidates(coeffs: jax.Array, factors: jax.Array, target: TargetLike, order: int, prune_tol: float = 1e-3,
               merge_cos: float = 0.95, rcond: float = 1e-7) -> Candidates:
  """prune, merge, then order for rank selection (see Candidates). Rows beyond the clusters (a rank
  above `distinct`) come from pruned components first: their directions are unrelated to the kept
  ones, where a cluster member would start as a near-duplicate of its seed."""
  c, v, keep = prune(coeffs, factors, order, prune_tol)
  mc, mv, seed, _ = merge(c, v, order, keep, merge_cos)
  group = jnp.where(seed, 0, jnp.where(keep, 2, 1))
  by_group = jnp.lexsort((-jnp.abs(mc), group))
  mc, mv, seed = mc[by_group], mv[by_group], seed[by_group]
  perm = greedy_order(mv, target, order, seed, rcond)
  return Candidates(mc[perm], mv[perm], jnp.sum(seed))


def fit_first(cands: Candidates, target: TargetLike, order: int, rank: jax.Array, rcond: float = 1e-7,
              gtol: float = 1e-8, max_iter: int = 200) -> Refined:
  """Rank `rank` from the first `rank` candidate rows: refit_weights then refine, at the candidates'
  fixed width m (rows >= rank inactive, weight 0). rank may be traced, so one compiled program serves
  every rank and vmaps over ranks and over a batch of (candidates, target)."""
  m = cands.coeffs.shape[0]
  on = jnp.arange(m) < rank
  c = refit_weights(cands.factors, target, order, on, rcond)
  return refine(c, cands.factors, target, order, on, gtol, max_iter)


# ---------------------------------------------------------------------------------------------
# The driver.

class Reduction(NamedTuple):
  """reduce's answer, on the host in float64.

  coeffs (k,), factors (k, d) unit rows: T = sum_i coeffs_i factors_i^{(x)l}, k = rank.
  rel_error: ||T - T*||_F / ||T*||_F against the input tensor (dense: exact; CP: the Gram form).
  grad_norm, iterations, status: of the refinement at rank k (see refine; status in STATUSES).
  rule: what fixed k: 'given' (rank=k), 'fit', 'noise', 'distinct' or 'limit' (see reduce).
  wide_rel_error: the input fit's rel_error. distinct: clusters after prune and merge.
  rel_errors: refined rel_error of ranks 1, 2, ... as far as the rank rule looked (rank=k: [rel_error]).
  noise_gain: the eta^2 the noise rule used (nan when it was off).
  """
  coeffs: np.ndarray
  factors: np.ndarray
  rel_error: float
  rank: int
  rule: str
  grad_norm: float
  iterations: int
  status: str
  wide_rel_error: float
  distinct: int
  rel_errors: np.ndarray
  noise_gain: float


_candidates_jit = jax.jit(candidates, static_argnames=('order',))
_fit_jit = jax.jit(fit_first, static_argnames=('order',))


def noise_gain(key: jax.Array, dim: int, order: int, draws: int = 8, starts: int = 8, width: int = 4) -> float:
  """E[max_u <N, u^{(x)l}>^2] / ||N||^2 for a symmetrized Gaussian tensor N (d,)*l: the share of a noise
  tensor's squared norm that one fitted component takes (the best rank-1 fit of N gains exactly
  <N, u^{(x)l}>^2 at its optimum u). Estimated in float64 over `draws` tensors from `key`, each the
  best of `starts` rank-1 fits (fit_first from a uniform random direction: local optima, like the
  components of a wide fit). Measured: 0.17 at d = 7, 0.09 at d = 10, 0.03 at d = 20 (l = 3); it falls
  like d^{1-l}. A host loop over the draws * starts fits, each run by the `width`-row fit program
  (reduce compiles it anyway for ranks <= 4), so the estimate compiles nothing of its own.
  """
  with jax.enable_x64(True):
    k_noise, k_start = jax.random.split(jnp.asarray(key))
    gains = []
    for i in range(draws):
      n = tensors.symmetrize(jax.random.normal(jax.random.fold_in(k_noise, i), (dim,) * order))
      n = n / jnp.linalg.norm(n)
      u = jax.random.normal(jax.random.fold_in(k_start, i), (starts, width, dim))
      u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
      errs = [float(_fit_jit(Candidates(jnp.zeros(width), u[s], jnp.asarray(1)), n, order, 1).rel_error)
              for s in range(starts)]
      gains.append(1.0 - min(errs) ** 2)
  return float(np.mean(gains))


@functools.lru_cache(maxsize=64)
def _noise_gain_cached(dim: int, order: int, key_data: Tuple[int, ...], width: int) -> float:
  return noise_gain(jnp.asarray(key_data, jnp.uint32), dim, order, width=width)


def _key_data(key) -> Tuple[int, ...]:
  """A PRNG key (raw uint32 or typed; None: PRNGKey(0)) as a hashable tuple of its raw data."""
  if key is None:
    key = jax.random.PRNGKey(0)
  if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  data = np.asarray(key)
  if data.dtype != np.uint32 or data.shape != (2,):
    raise ConfigError(f'key must be a jax PRNG key (jax.random.PRNGKey(seed) or jax.random.key(seed)), got '
                      f'{data.dtype} array of shape {data.shape}')
  return tuple(int(x) for x in data)


def _width(rank: int, m: int) -> int:
  """Rows a rank-`rank` fit runs with: the next power of 2, at least 4, at most m (few compiled
  shapes: one per (width, d, l), shared by every rank up to the width)."""
  return min(m, max(4, 1 << (rank - 1).bit_length()))


def reduce(coeffs, factors, target, order: Optional[int] = None, rank: Optional[int] = None, *,
           prune_tol: float = 1e-3, merge_cos: float = 0.95, rcond: float = 1e-7, gtol: float = 1e-8,
           max_iter: int = 200, rank_rtol: float = 0.05, rank_atol: float = 1e-6,
           noise_margin: Optional[float] = 3.0, key=None) -> Reduction:
  """Turns a wide fit (coeffs (m,), factors (m, d)) of `target` into a rank-k decomposition.

  target: a symmetric array (d,)*l (order = its ndim when None), or a pair (coeffs (r,), factors (r, d))
  meaning sum_j coeffs_j factors_j^{(x)order} (order required). Inputs are numpy or JAX arrays; the
  work runs in float64 whatever jax_enable_x64 says, and the answer is numpy float64.

  Pipeline: candidates (prune with prune_tol, merge with merge_cos, clusters in greedy_order; see
  Candidates) -> for rank k the first k candidates -> refit_weights (rcond) -> refine (gtol, max_iter).
  The answer's rel_error is that of a stationary point at rank k (status says whether gtol was met).

  rank=k (an integer in [1, m]) forces k. If fewer than k clusters survive pruning and merging, the
  extra components start from the pruned ones, then from the non-seed members of clusters (see
  candidates): the answer is refined at rank k, not padded. A k above what the data support may have
  no best rank-k approximation (the set of rank <= k tensors is not closed): refine then drives a pair
  of nearly opposite components to large cancelling weights while the residual creeps down, and stops
  at max_iter (status 'max_iter'; the rel_error is still that of the rank-k answer).

  rank=None picks k from rho_j, the refined rel_error at rank j = 1, 2, ... (rho_0 = 1), and rho_wide,
  the wide fit's. The scan stops at the first j with
    rho_j <= max((1 + rank_rtol) rho_wide, rho_wide + rank_atol)       (defaults 5%, 1e-6),
  i.e. the first rank as good as the wide fit, or at j_max = the number of clusters (for a dense
  target also at most D / (2d), D = C(d + l - 1, l) the dimension of symmetric tensors). Without the
  noise test (noise_margin=None, or a CP target) k is that j. With it, component j is significant when
    rho_{j-1}^2 - rho_j^2 > noise_margin * e_j / (1 - e_j) * rho_j^2        (default margin 3),
  e_j = noise_share(noise_gain(key, d, l), j, d, l): the share of its residual that one more
  component takes when the residual is Gaussian noise (the gain it would have if it fitted noise),
  and k is the last significant j scanned. Rationale: on a noisy tensor the wide fit has fitted noise
  with its extra components, each taking a share e_j of the residual, so rho_wide lies well below
  the true rank's rho_r and the first rank as good as the wide fit is too large; past the true rank
  every further component gains ~e_j (measured: 0.3-2x e_j at d = 6..20, l = 3, 4), a true one
  weight^2 / noise^2 times more. Rule in the answer: 'given', 'fit' (k = the first rank as good as
  the wide fit), 'noise' (the components after k, up to the end of the scan, are not significant),
  'distinct' (every cluster was significant: k = the number of clusters), 'limit' (the scan stopped
  at D / (2d) with every rank significant: k may be too small).
  When the rule fails: a true component of weight below ~sqrt(noise_margin e) times the noise norm
  (weights under the noise floor: counted as noise, k too small); noise that is not like i.i.d.
  Gaussian (an empirical moment tensor from few samples: structured residuals look like signal, k
  too large); a true component that the wide fit never found, or that shares a cluster with another
  (directions with |cos| >= merge_cos merge: k too small); a wide fit that stopped far from the
  target (k stays at most the first rank as good as it); a CP target, which has no noise test.
  key: PRNG key of the noise_gain estimate (default PRNGKey(0); cached per (d, l, key, width)).

  Raises ConfigError (an argument out of range, named) or TargetError (a target that is not a finite,
  non-zero symmetric tensor or CP pair of the fit's dimension).
  """
  c_in, v_in = _check_fit(coeffs, factors)
  m, d = v_in.shape
  target_in, order = _check_target(target, order, d)
  rank = _check_rank(rank, m)
  _check_options(prune_tol=prune_tol, merge_cos=merge_cos, rcond=rcond, gtol=gtol, max_iter=max_iter,
                 rank_rtol=rank_rtol, rank_atol=rank_atol, noise_margin=noise_margin)
  key_data = _key_data(key)
  with jax.enable_x64(True):
    wide = _rel_error64(c_in, v_in, target_in, order)
    tgt = _symmetric_target(target_in, order)
    cands = _candidates_jit(jnp.asarray(c_in), jnp.asarray(v_in), tgt, order, prune_tol, merge_cos, rcond)
    distinct = int(cands.distinct)
    fits = {}

    def fit(k):
      if k not in fits:
        w = _width(k, m)
        fits[k] = jax.device_get(_fit_jit(Candidates(cands.coeffs[:w], cands.factors[:w], cands.distinct), tgt,
                                          order, k, rcond, gtol, max_iter))
      return fits[k]

    eta2 = float('nan')
    if rank is not None:
      k, rule = rank, 'given'
    elif distinct == 0:
      raise ConfigError('coeffs: every component of the fit has weight 0; give rank= to refit from its directions')
    else:
      use_noise = noise_margin is not None and not is_cp(tgt)
      if use_noise:
        eta2 = _noise_gain_cached(d, order, key_data, _width(1, m))
      k, rule = _pick_rank(lambda j: float(fit(j).rel_error), distinct, wide, d, order, rank_rtol, rank_atol,
                           noise_margin if use_noise else None, eta2)
    best = fit(k)
    c, v = np.asarray(best.coeffs[:k], np.float64), np.asarray(best.factors[:k], np.float64)
    rel_error = _rel_error64(c, v, target_in, order)
  tried = sorted(fits) if rank is None else [k]
  return Reduction(coeffs=c, factors=v, rel_error=rel_error, rank=k, rule=rule,
                   grad_norm=float(best.grad_norm), iterations=int(best.iterations),
                   status=STATUSES[int(best.status)], wide_rel_error=wide, distinct=distinct,
                   rel_errors=np.array([float(fits[j].rel_error) for j in tried]), noise_gain=eta2)


def _pick_rank(rho, distinct, wide, dim, order, rtol, atol, margin, eta2):
  """(k, rule) by the rule in reduce's docstring; rho(j) is the refined rel_error at rank j."""
  threshold = max((1.0 + rtol) * wide, wide + atol)
  if margin is None:
    return next(((k, 'fit') for k in range(1, distinct + 1) if rho(k) <= threshold), (distinct, 'limit'))
  dof = math.comb(dim + order - 1, order)
  last = max(1, min(distinct, dof // (2 * dim)))
  k, before = 1, 1.0
  for j in range(1, last + 1):
    after = rho(j)
    e = noise_share(eta2, j, dim, order)
    if before ** 2 - after ** 2 > margin * e / (1.0 - e) * after ** 2:
      k = j
    if after <= threshold:
      return k, 'fit' if k == j else 'noise'
    before = after
  if k < last:
    return k, 'noise'
  return k, 'distinct' if last == distinct else 'limit'


def noise_share(eta2: float, rank: int, dim: int, order: int) -> float:
  """The expected share of the rank-(rank - 1) residual that component `rank` captures when that
  residual is Gaussian noise: eta2 (see noise_gain) corrected for the (rank - 1) d degrees of freedom
  already fitted, eta2 D / (D - (rank - 1) d) with D = C(d + l - 1, l) the dimension of symmetric
  tensors (capped at 1/2)."""
  dof = math.comb(dim + order - 1, order)
  return min(0.5, eta2 * dof / max(dof - (rank - 1) * dim, 1))


def _rel_error64(c, v, target, order) -> float:
  """||T(c, V) - T*|| / ||T*|| in float64 (call under enable_x64): dense exactly, CP by the Gram form."""
  if is_cp(target):
    a, u = target
    star = a @ (u @ u.T) ** order @ a
    sq = c @ (v @ v.T) ** order @ c - 2.0 * c @ (v @ u.T) ** order @ a + star
    return float(np.sqrt(max(sq, 0.0) / star))
  t = np.asarray(tensors.dense_cp(jnp.asarray(c), jnp.asarray(v), order), np.float64)
  return float(np.linalg.norm(t - target) / np.linalg.norm(target))


# ---------------------------------------------------------------------------------------------
# Validation: one-line user errors naming the argument and the accepted range.

def _finite_real(x, name, error):
  try:
    a = np.asarray(x)
  except Exception:  # noqa: BLE001 - ragged or non-numeric input is the same user error
    raise error(f'{name} must be a real numeric array') from None
  if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a) or a.dtype == np.bool_:
    raise error(f'{name} must be a real numeric array, got dtype {a.dtype}')
  if not np.all(np.isfinite(a)):
    raise error(f'{name} has {int(np.sum(~np.isfinite(a)))} non-finite entries')
  return a.astype(np.float64)


def _check_fit(coeffs, factors):
  c = _finite_real(coeffs, 'coeffs', ConfigError)
  v = _finite_real(factors, 'factors', ConfigError)
  if c.ndim != 1 or v.ndim != 2 or v.shape[0] != c.shape[0] or c.shape[0] == 0 or v.shape[1] == 0:
    raise ConfigError(f'coeffs and factors must have shapes (m,) and (m, d) with m, d >= 1, got {c.shape} and '
                      f'{v.shape}')
  return c, v


def _check_target(target, order, d):
  """(target as float64 numpy: array or (coeffs, factors) tuple, order)."""
  if order is not None and (not _is_int(order) or order < 2):
    raise ConfigError(f'order must be an integer >= 2, got {order!r}')
  if is_cp(target):
    if len(target) != 2:
      raise TargetError(f'target: a CP target is a pair (coeffs (r,), factors (r, d)), got {len(target)} items')
    if order is None:
      raise ConfigError('order is required for a (coeffs, factors) target')
    a = _finite_real(target[0], 'target coeffs', TargetError)
    u = _finite_real(target[1], 'target factors', TargetError)
    if a.ndim != 1 or u.ndim != 2 or u.shape[0] != a.shape[0] or a.shape[0] == 0:
      raise TargetError(f'target: coeffs and factors must have shapes (r,) and (r, d) with r >= 1, got {a.shape} and '
                        f'{u.shape}')
    if u.shape[1] != d:
      raise TargetError(f'target: factors have d={u.shape[1]}, the fit has d={d}')
    if not a @ (u @ u.T) ** int(order) @ a > 0:
      raise TargetError('target: the CP tensor is zero')
    return (a, u), int(order)
  t = _finite_real(target, 'target', TargetError)
  order = t.ndim if order is None else int(order)
  if t.shape != (d,) * order:
    raise TargetError(f'target must have shape {(d,) * order} (d={d} from factors, order={order}), got {t.shape}')
  if float(np.max(np.abs(t))) == 0:
    raise TargetError('target: the tensor is zero')
  gap, k = tensors.asymmetry(t)
  if gap > SYM_TOL:
    raise TargetError(f'target is not symmetric (relative gap {gap:.1e} under swapping axes {k} and {k + 1}, '
                      f'tolerance {SYM_TOL:.0e})')
  return t, order


def _symmetric_target(target, order):
  """The target as float64 JAX arrays; a dense one projected onto symmetric tensors (within SYM_TOL
  already): contract's single unfolding assumes symmetry."""
  if is_cp(target):
    return tuple(jnp.asarray(x) for x in target)
  return tensors.symmetrize(jnp.asarray(target))


def _check_rank(rank, m):
  if rank is None:
    return None
  if not _is_int(rank) or not 1 <= rank <= m:
    raise ConfigError(f'rank must be None or an integer in [1, {m}] (at most the width m={m} of the fit), got {rank!r}')
  return int(rank)


_OPTION_RANGES = {  # name: (accepts, description)
    'prune_tol': (lambda x: 0 <= x < 1, 'a number in [0, 1)'),
    'merge_cos': (lambda x: 0 < x <= 1, 'a number in (0, 1]'),
    'rcond': (lambda x: 0 < x < 1, 'a number in (0, 1)'),
    'gtol': (lambda x: 0 <= x < math.inf, 'a finite number >= 0'),
    'rank_rtol': (lambda x: 0 <= x < math.inf, 'a finite number >= 0'),
    'rank_atol': (lambda x: 0 <= x < math.inf, 'a finite number >= 0'),
    'noise_margin': (lambda x: 0 < x < math.inf, 'None or a finite number > 0'),
}


def _check_options(max_iter, noise_margin, **values):
  if not _is_int(max_iter) or max_iter < 1:
    raise ConfigError(f'max_iter must be an integer >= 1, got {max_iter!r}')
  if noise_margin is not None:
    values['noise_margin'] = noise_margin
  for name, x in values.items():
    ok, accepted = _OPTION_RANGES[name]
    if not (isinstance(x, numbers.Real) and not isinstance(x, bool) and ok(x)):
      raise ConfigError(f'{name} must be {accepted}, got {x!r}')


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
