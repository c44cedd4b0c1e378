"""Min-norm least squares on tall or wide Jacobians, and one rank-revealing factorization for a
whole grid of column prefixes (the lazy optimum at every width of a grid from one factorization).

- `min_norm_solve(J, b)`: the numerical rank of J and J^+ b, by the eigendecomposition of the smaller
  Gram matrix.
- `factor_components(a, ...)` + `prefix_min_norm(...)`: J's columns come in blocks of k (one block per
  model component, in component order); one rank-revealing block Gram-Schmidt of J gives, for every
  prefix of m blocks at once, the rank of J[:, :m k] and its min-norm solution.
- `rotate_components` + `qr_components(...)` + `solve_prefixes(...)`: the same for every prefix by one
  LAPACK Householder QR (geqrf) in a static column layout, ~1/3 the flops of the Gram-Schmidt
  (LazyExact's default grid kernel, method 'qr').
- `one_at_a_time(fn)`: fn, but under vmap a loop over the batch (jax's batched CPU LAPACK kernels can
  deadlock on a 2-thread pool).
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np


def one_at_a_time(fn):
  """fn, but under vmap applied to one batch element after the other (lax.map) instead of batched.

  For the LAPACK calls (eigh, qr, svd, cholesky): jax's CPU kernels split a batch into tasks on
  XLA's thread pool and wait for them from a thread of that pool; with 2 threads (2 cores) both
  can end up waiting and the program hangs (observed: batched cholesky, eigh). Unbatched calls run
  inline. Results are identical; the batch loses only that intra-op parallelism.
  """
  f = jax.custom_batching.custom_vmap(fn)

  @f.def_vmap
  def rule(axis_size, in_batched, *args):
    args = tuple(a if b else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, b in zip(args, in_batched))
    out = jax.lax.map(lambda xs: f(*xs), args)
    return out, jax.tree.map(lambda _: True, out)

  return f


@one_at_a_time
def _eigh(g: jax.Array):
  return jnp.linalg.eigh(g)

def min_norm_solve(jac: jax.Array, b: jax.Array, n_params):
  """(numerical rank of J, the min-norm least-squares solution J^+ b), J of shape (N, P).

  By the eigendecomposition of the smaller Gram matrix (J J^T if N <= P, else J^T J), about 3x
  faster than an SVD of J on CPU at the sizes of the lazy threshold. An eigenvalue counts when it
  exceeds lambda_max * max(N, n_params) * eps, the rounding floor of a Gram matrix, i.e. singular
  values above sigma_max sqrt(max(N, n_params) eps): ~1e-6 sigma_max in float64, but ~1e-2 in float32,
  too coarse near the threshold where J is nearly square; use float64 there. n_params: the real
  (unpadded) parameter count, so zero columns of padding change nothing.
  """
  n, p = jac.shape
  eps = jnp.finfo(jac.dtype).eps
  gram = jac @ jac.T if n <= p else jac.T @ jac
  lam, vec = _eigh(gram)
  keep = lam > lam[-1] * jnp.maximum(jnp.asarray(n, jac.dtype), n_params) * eps
  inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
  if n <= p:  # J^+ b = J^T U diag(1/lam) U^T b
    delta = jac.T @ (vec @ (inv * (vec.T @ b)))
  else:  # J^+ b = V diag(1/lam) V^T J^T b
    delta = vec @ (inv * (vec.T @ (jac.T @ b)))
  return jnp.sum(keep).astype(jnp.int32), delta


# ----------------------------------------------------------------------------------------------
# One factorization for a whole width grid (LazyExact with `widths`).
#
# The inits are nested (component i is drawn from fold_in(key, i) alone), so J_m, the Jacobian at
# width m, is the first m k columns of J_M (k parameters per component, columns in component order)
# for every m <= M. One rank-revealing Gram-Schmidt of J_M in that order gives orthonormal directions
# q_1, q_2, ... such that the directions of components < m span range(J_m), for every m at once.

NO_COMPONENT = 2 ** 30  # the component of an empty direction slot


@one_at_a_time
def _left_singular(x: jax.Array):
  """(U (N, k), singular values (k,), descending) of x (N, k); zero-padded when N < k."""
  n, k = x.shape
  if n >= k:
    q, r = jnp.linalg.qr(x)
    ur, sv, _ = jnp.linalg.svd(r)
    return q @ ur, sv
  u, sv, _ = jnp.linalg.svd(x, full_matrices=False)
  return jnp.pad(u, ((0, 0), (0, k - n))), jnp.pad(sv, (0, k - n))


@one_at_a_time
def _cholesky_solve(g: jax.Array, y: jax.Array) -> jax.Array:
  return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(g), True), y)


def _block_gs(e: jax.Array, k: int, first: int, tau) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Rank-revealing Gram-Schmidt of the k-column blocks of one panel, in order.

  e (N, w), w = b k: the panel's columns, already orthogonal to every earlier panel's directions;
  block i is component first + i. Each block is orthogonalized against the panel's directions so far
  (twice: CGS2); the left singular vectors of what remains whose singular value exceeds `tau` are
  the block's new directions. Returns u (N, w) (directions in block order, zero columns after the
  last), s (w,) their singular values (0: empty slot), comp (w,) their component (NO_COMPONENT: empty).
  """
  n, w = e.shape
  int_dtype = jnp.int32

  def body(i, carry):
    u, s, comp, cnt = carry
    x = jax.lax.dynamic_slice_in_dim(e, i * k, k, axis=1)
    for _ in range(2):
      x = x - u @ (u.T @ x)
    cand, sv = _left_singular(x)
    keep = sv > tau
    u = jax.lax.dynamic_update_slice(u, cand * keep, (jnp.zeros((), int_dtype), cnt))
    s = jax.lax.dynamic_update_slice(s, jnp.where(keep, sv, 0.0), (cnt,))
    comp = jax.lax.dynamic_update_slice(comp, jnp.where(keep, first + i, NO_COMPONENT).astype(int_dtype), (cnt,))
    return u, s, comp, cnt + jnp.sum(keep).astype(int_dtype)

  init = (jnp.zeros((n, w), e.dtype), jnp.zeros((w,), e.dtype), jnp.full((w,), NO_COMPONENT, int_dtype),
          jnp.zeros((), int_dtype))
  u, s, comp, _ = jax.lax.fori_loop(0, w // k, body, init)
  return u, s, comp


def factor_components(a: jax.Array, n_cols: int, k: int, tau, panel_cols: int = 512, groups: int = 3):
  """Rank-revealing block Gram-Schmidt of the first n_cols columns of `a`, k columns per component.

  a (N, n_cols + e): J in component order, then e right-hand sides (carried along, not factored).
  Block modified Gram-Schmidt, right-looking over panels of ~panel_cols columns (`groups` lax.scans:
  one compiled panel step each; the trailing update of a panel runs over every column from its
  group's first one, masked, so that shapes are static): each panel is factored by _block_gs (directions with singular value > tau), then its
  directions are projected out of every later column. Returns, with S = min(N, n_cols) and the
  directions compacted in component order:
    coef (S, n_cols + e)  coefficients of every column on the directions (a = Q coef, Q never
                          formed); a direction of component i has coefficient 0 on the columns of
                          components < i (exactly: what GS dropped there is below tau)
    s (S,)                each direction's singular value in its block (0: empty)
    comp (S,)             each direction's component (NO_COMPONENT: empty)
  The directions of components < m are the first ones and span range(a[:, :m k]) for every m.
  """
  n, total = a.shape
  m = n_cols // k
  step = max(1, min(panel_cols // k, m))  # components per panel
  n_pan = -(-m // step)
  w = step * k
  # zero columns pad the last panel (a zero block has no direction)
  a = jnp.concatenate([a[:, :n_cols], jnp.zeros((n, n_pan * w - n_cols), a.dtype), a[:, n_cols:]], axis=1)
  width = a.shape[1]
  # Panels in `groups` consecutive scans; a group updates only the columns from its first panel on
  # (static shapes per scan): 3 groups do 2/3 of one scan's trailing-update work.
  bounds = np.linspace(0, n_pan, min(groups, n_pan) + 1).round().astype(int)
  coefs, svals, comps = [], [], []
  for g0, g1 in zip(bounds[:-1], bounds[1:]):
    base = int(g0) * w
    sub = a[:, base:]
    col = jnp.arange(base, width)

    def panel(sub, p, base=base, col=col):
      lo = p * w
      u, s, comp = _block_gs(jax.lax.dynamic_slice_in_dim(sub, lo - base, w, axis=1), k, p * step, tau)
      coef = jnp.where(col >= lo, u.T @ sub, 0.0)
      return sub - u @ jnp.where(col >= lo + w, coef, 0.0), (coef, s, comp)

    sub, (coef, s, comp) = jax.lax.scan(panel, sub, jnp.arange(int(g0), int(g1)))
    a = a.at[:, base:].set(sub)
    coefs.append(jnp.pad(coef.reshape(-1, width - base), ((0, 0), (base, 0))))
    svals.append(s.reshape(-1))
    comps.append(comp.reshape(-1))
  coef = jnp.concatenate(coefs)
  coef = jnp.concatenate([coef[:, :n_cols], coef[:, n_pan * w:]], axis=1)
  s, comp = jnp.concatenate(svals), jnp.concatenate(comps)
  order = jnp.argsort(comp, stable=True)[:min(n, n_cols)]
  coef, s, comp = coef[order], s[order], comp[order]
  col_comp = jnp.arange(total) // k
  coef = jnp.where((comp[:, None] <= col_comp[None, :]) | (col_comp[None, :] >= m), coef, 0.0)
  return coef, s, comp


def prefix_min_norm(coef: jax.Array, s: jax.Array, comp: jax.Array, widths: Tuple[int, ...], k: int,
                    n_rows: int):
  """(ranks (G,), x (G, M k)): for every width m_j of the sorted grid `widths`, the numerical rank of
  J_j = J[:, :m_j k] and the min-norm least-squares solution x_j = J_j^+ b_j (zero beyond m_j k).

  coef, s, comp: factor_components of [J, b_1 .. b_G] (J of n_rows rows, M = widths[-1]). In the
  directions' coordinates J_j = Q_j C_j (Q_j: the directions of components < m_j), so
  x_j = C_j^T (C_j C_j^T)^{-1} Q_j^T b_j; C_j C_j^T (whose eigenvalues are the squared singular
  values of J_j) is accumulated over the grid, each column entering once, and solved by Cholesky.
  The rank is the number of directions of components < m_j: what factor_components kept, i.e.
  residuals above tau. It equals min_norm_solve's count (singular values above sigma_max
  sqrt(max(N, P) eps)) whenever J_j has no singular value between the rounding floor of a dependent
  column and that threshold (exactly dependent columns: cp's coefficient column, the
  Alexander-Hirschowitz defects, saturation at N, all sit at the rounding floor).
  """
  n_dir = coef.shape[0]
  cols = widths[-1] * k
  ranks, xs = [], []
  gram, prev, z = jnp.zeros((0, 0), coef.dtype), 0, jnp.zeros((0,), coef.dtype)
  for j, m in enumerate(widths):
    # One width after the other: XLA could run the G independent Cholesky factorizations at once,
    # and two batched LAPACK calls at once deadlock jax's CPU kernels on a 2-thread pool (each waits
    # for batch tasks that the other's thread would run). The barrier makes width j wait for j - 1.
    gram, z = jax.lax.optimization_barrier((gram, z))
    size = min(n_dir, m * k)
    block = coef[:size, prev * k:m * k]
    pad = size - gram.shape[0]
    gram = jnp.pad(gram, ((0, pad), (0, pad))) + block @ block.T
    prev = m
    valid = comp[:size] < m
    g = jnp.where(valid[:, None] & valid[None, :], gram, 0.0)
    count = valid
    g = g + jnp.diag((~count).astype(coef.dtype))
    y = jnp.where(count, coef[:size, cols + j], 0.0)
    z = _cholesky_solve(g, y)
    xs.append(jnp.pad(coef[:size, :m * k].T @ z, (0, cols - m * k)))
    ranks.append(jnp.sum(count).astype(jnp.int32))
  return jnp.stack(ranks), jnp.stack(xs)
# ----------------------------------------------------------------------------------------------
# One Householder QR for a whole width grid (LazyExact's grid path, method 'qr', the default).
#
# The same prefix structure as above, factored by LAPACK's blocked Householder QR (geqrf, one call
# per seed) instead of a block Gram-Schmidt written in jax: about the flops of the QR itself, where
# the Gram-Schmidt path does ~3x that in its masked trailing updates and per-width Cholesky solves.
# Rank-revealing in component order needs three things Householder QR without pivoting lacks:
#   1. dependent directions inside a component (cp's coefficient column is exactly the factor
#      columns' Euler combination): each component's k columns are first rotated onto their right
#      singular vectors (rotate_components); a rotated column of norm <= tau is zeroed and moved out
#      of the pivot order (a zero column costs a Householder step nothing: its reflector is I);
#   2. columns dependent on earlier components (Alexander-Hirschowitz defects): a pivot |R_jj| <=
#      tau deflates column j (qr_components moves it behind the pivots and refactors; each deflation
#      costs one more QR, none happen on generic inits outside the AH cases);
#   3. saturation: pivots stop at N rows; the columns after the N-th pivot are non-pivot columns.
# The layout of the factored matrix is static: [pivots (n_piv) | zero columns up to n0 = min(N, P) |
# non-pivot columns in component order | zero columns | right-hand sides], so every width's system
# [T_m | E_m] is a leading block of T and a column prefix of E, and one triangular solve with E and
# one Cholesky of I + F^T F (F = T^-1 E, nested in its leading blocks) serve the whole grid
# (solve_prefixes). Deflated columns need `slots` extra zero columns when the pivots do not reach
# N (zero columns fill the pivot slots they vacate); when more are needed the kernel reports
# overflow and LazyExact.retry gives the engine the algorithm to rerun the program with: a slot
# for every column (always enough).


def rotate_components(jt: jax.Array, tau) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Each component's Jacobian columns rotated onto its right singular vectors.

  jt (B, k, N): row j of block i is column j of component i's Jacobian J_i (N x k). With
  J_i^T J_i = V_i diag(lam) V_i^T (eigh, eigenvalues descending), rot_i = V_i^T J_i^T: its rows are
  J_i v_ij, orthogonal, of norms ~sqrt(lam_j); a row of norm <= tau (measured on the rotated row,
  not taken from lam) is a dependent direction of the component: keep False (the caller treats it
  as a zero column; it is not zeroed here, which would be a second (B, k, N) buffer).
  J_i x = (J_i V_i)(V_i^T x), so a min-norm solution y in rotated coordinates maps back as
  x_i = V_i y_i, y_i = 0 on dropped rows. Returns (rot (B, k, N), vec (B, k, k), keep (B, k)).

  One component after the other (lax.map): as batched dots over the B components, XLA's CPU dot
  kernels allocated ~2 (B, k, N) operand copies outside its own buffer accounting (measured: +585 MiB
  at d = 32, B = 200); per component they are k x N and the LAPACK eigh runs unbatched.
  """
  def one(x):
    _, vec = jnp.linalg.eigh(x @ x.T)
    vec = vec[:, ::-1]
    rot = vec.T @ x
    return rot, vec, jnp.sqrt(jnp.sum(rot * rot, axis=-1)) > tau
  return jax.lax.map(one, jt)


def _qr_layout(keep: jax.Array, dep: jax.Array, n_rows: int, n0: int):
  """The static-shape column order of the factored matrix (see the section comment).

  keep (P',): real (nonzero) columns, in component order; dep: deflated ones. The first n_rows
  real, undeflated columns are the pivots. Returns (perm: layout position -> column, pos: its
  inverse, piv (P',), n_piv, ok: enough zero columns to fill the pivot slots [n_piv, n0)). Built
  from running counts (no sort: a sort costs ~0.7 s of XLA compile time, this ~0.1 s)."""
  pp = keep.shape[0]
  cand = keep & ~dep
  piv = cand & (jnp.cumsum(cand, dtype=jnp.int32) <= n_rows)
  n_piv = jnp.sum(piv, dtype=jnp.int32)
  zero = ~keep
  zrank = jnp.cumsum(zero, dtype=jnp.int32) - 1
  fill = zero & (zrank < n0 - n_piv)
  nonpiv = keep & ~piv
  n_nonpiv = jnp.sum(nonpiv, dtype=jnp.int32)
  pos = jnp.where(piv, jnp.cumsum(piv, dtype=jnp.int32) - 1,
                  jnp.where(fill, n_piv + zrank,
                            jnp.where(nonpiv, n0 + jnp.cumsum(nonpiv, dtype=jnp.int32) - 1, n0 + n_nonpiv + zrank - (n0 - n_piv))))
  perm = jnp.zeros((pp,), pos.dtype).at[pos].set(jnp.arange(pp, dtype=pos.dtype), unique_indices=True)
  return perm, pos, piv, n_piv, jnp.sum(zero) >= n0 - n_piv


def _householder_r(a: jax.Array) -> jax.Array:
  """R of a = Q R in the upper triangle (the lower holds LAPACK's reflectors): one geqrf."""
  return jnp.linalg.qr(a, mode='raw')[0].mT


def qr_components(cols: jax.Array, keep: jax.Array, rhs: jax.Array, n_cols: int, tau, max_deflations: int):
  """Householder QR of the real columns in component order, deflating dependent pivots.

  cols (n_cols, N): the columns as rows (rotate_components' rows); keep (P',), P' = n_cols + slots:
  the columns (a column with keep False is treated as zero), then `slots` zero columns (keep
  False); rhs (N, G), carried along. A pivot with |R_jj| <= tau deflates its column
  (marked, moved behind the pivots) and the matrix is refactored, at most max_deflations times.
  Returns (r (N, P' + G): R in the upper triangle, columns in layout order; perm (P',): layout
  position -> column, pos: its inverse; piv (P',) pivot flags by column; overflow: a deflation did not fit the zero
  columns, or max_deflations were used and a small pivot is left).
  """
  n = cols.shape[1]
  n0 = min(n, n_cols)
  pp = keep.shape[0]

  def factor(dep):
    perm, pos, piv, n_piv, ok = _qr_layout(keep, dep, n, n0)
    a = jnp.where(keep[perm][:, None], cols[jnp.minimum(perm, n_cols - 1)], 0.0)  # (P', N)
    r = _householder_r(jnp.concatenate([a.T, rhs], axis=1))
    small = (jnp.arange(n0) < n_piv) & (jnp.abs(jnp.diagonal(r)[:n0]) <= tau)
    return r, perm, pos, piv, jnp.argmax(small).astype(jnp.int32), jnp.any(small), ok

  def deflate(carry):  # the first small pivot's column is deflated, the matrix refactored
    dep, _, perm, _, _, first, _, _, count = carry
    dep = dep.at[perm[first]].set(True)
    return (dep, *factor(dep), count + 1)

  def again(carry):
    *_, bad, ok, count = carry
    return bad & ok & (count < max_deflations)

  # The first factorization outside the loop: it is the loop's initial carry, so R is never a
  # separate buffer of zeros (the loop body runs only when a pivot is small).
  dep = jnp.zeros((pp,), bool)
  carry = (dep, *factor(dep), jnp.zeros((), jnp.int32))
  _, r, perm, pos, piv, _, bad, ok, _ = jax.lax.while_loop(again, deflate, carry)
  return r, perm, pos, piv, bad | ~ok


def solve_prefixes(r: jax.Array, perm: jax.Array, pos: jax.Array, piv: jax.Array, keep: jax.Array,
                   widths: Tuple[int, ...], n_cols: int, k: int):
  """(ranks (G,), y (P', G)): for every width m_j of the grid, the rank of the columns of components
  < m_j (column c is of component c // k; the P' - n_cols slots of none) and the min-norm
  least-squares solution of those columns against right-hand side j, from qr_components.

  In layout order the width-m system is [T_m | E_m] y = c_m with T_m the leading p_m x p_m block of
  T = R[:n0, :n0] (p_m = pivots of components < m = the rank), E_m the first s_m non-pivot columns
  (those of components < m; rows >= the pivots of their own and earlier components are the
  deflation's residual, zeroed), c_m = R[:p_m, rhs j]. Min-norm: with F = T^-1 E (rows >= p_m zero
  in E_m's columns) and g = T_m^-1 c_m, v = (I + F_m^T F_m)^-1 F_m^T g, u = g - F_m v: the leading
  s_m block of I + F^T F is I + F_m^T F_m, so one Cholesky of it serves every width. Zero columns
  get y = 0.
  """
  n = r.shape[0]
  pp = perm.shape[0]
  n0 = min(n, n_cols)
  n_extra = pp - n0
  n_comp = n_cols // k
  piv_upto = jnp.cumsum(jnp.sum(piv[:n_cols].reshape(n_comp, k), axis=1))  # pivots of components <= b
  real_upto = jnp.cumsum(jnp.sum(keep[:n_cols].reshape(n_comp, k), axis=1))
  ms = np.asarray(widths) - 1
  p_m, s_m = piv_upto[ms], real_upto[ms] - piv_upto[ms]  # (G,): rank, non-pivot columns
  n_piv = piv_upto[-1]
  i = jnp.arange(n0)
  # The pivot slots >= n_piv hold zero columns (R is exactly 0 there): they get a unit diagonal;
  # LAPACK's reflectors in the lower triangle are never read by the solves. The indices are made
  # data-dependent (+ min(n_piv, 0) = 0) so that XLA does not hoist an n0 x n0 mask out of the
  # engine's loop over seeds as a loop-invariant constant.
  j = (jnp.arange(n0, dtype=jnp.int32) + jnp.minimum(n_piv, 0)).astype(jnp.int32)
  t = r[:n0, :n0] + ((j[:, None] == j[None, :]) & (j[None, :] >= n_piv)).astype(r.dtype)
  c = jnp.where(i[:, None] < p_m[None, :], r[:n0, pp:], 0.0)
  g = jax.lax.linalg.triangular_solve(t, c, left_side=True, lower=False)  # (n0, G), zero beyond p_m
  if n_extra:
    col_e = perm[n0:]
    real_e = keep[col_e]
    limit = piv_upto[jnp.minimum(col_e // k, n_comp - 1)]  # pivots of the column's and earlier components
    e = jnp.where((i[:, None] < limit[None, :]) & real_e[None, :], r[:n0, n0:pp], 0.0)
    f = jax.lax.linalg.triangular_solve(t, e, left_side=True, lower=False)  # (n0, L)
    chol = jnp.linalg.cholesky(jnp.eye(n_extra, dtype=r.dtype) + f.T @ f)
    inside = jnp.arange(n_extra)[:, None] < s_m[None, :]
    y = jax.lax.linalg.triangular_solve(chol, jnp.where(inside, f.T @ g, 0.0), left_side=True, lower=True)
    v = jax.lax.linalg.triangular_solve(chol, jnp.where(inside, y, 0.0), left_side=True, lower=True,
                                        transpose_a=True)
    sol = jnp.concatenate([g - f @ v, v])
  else:
    sol = g
  return p_m.astype(jnp.int32), sol[pos]


