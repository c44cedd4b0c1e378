"""The lazy (NTK) regime: GD on the `jax.linearize` model and the exact lazy optimum.

Both algorithms share the model of one run (B = width bucket, mask (B,) = the run's real components):

  T(W) = s * sum_i mask_i c_i(W) v_i(W)^{(x)l}        (c, v) = objectives.canonical(W)

with s = 1/sqrt(m) under `ntk_scaling` (m = data.width, the true width) and s = 1 otherwise. With
`symmetric_init` the model is doubled: W = (W+, W-), T(W) = T(W+) - T(W-), both halves drawn as the
same W0, so T(W0) = 0 exactly; the width m still counts the distinct directions (2m components), and
the tangent space is that of the undoubled model (J = [J0, -J0]).

The linearized model at the random init W0 is T_lin(W) = T(W0) + J_{W0} (W - W0), built with
`jax.linearize`. Training it is a convex least-squares problem:

  `lazy` (Lazy)        GD (optax.sgd) on 1/2 ||T_lin(W) - T*||^2 from W0, matrix-free. The step size is
                       lr_scale / lambda_max(J^T J), lambda_max from power iteration on the linear map
                       v -> J^T J v (masked components are in its null space). Optional Nesterov
                       momentum: near the threshold J is nearly square and plain GD needs
                       ~cond(J)^2 steps, momentum ~cond(J). Both stay in W0 + range(J^T), so both
                       converge to the min-norm solution, i.e. to lazy_exact.
  `lazy_exact`         the limit of that GD: the min-norm solution W* = W0 + J^+ (T* - T(W0)), whose
  (LazyExact)          model is T(W0) + the projection of T* - T(W0) onto range(J). J is written in the
                       C(d+l-1, l)-dimensional basis of unique symmetric entries (weights
                       sqrt(multiplicity), an isometry on symmetric tensors). The engine runs its
                       grid path: a whole width grid per seed from one rank-revealing block
                       Gram-Schmidt of J at the largest width (factor_components, prefix_min_norm;
                       the inits are nested, so J_m is a column prefix of J_M). The per-width path
                       (the eigendecomposition of the Gram matrix, min_norm_solve) is the reference
                       in tests. Reports the numerical rank of J (`tangent_rank`) and the
                       dimension count `sym_dim` = C(d+l-1, l); the lazy threshold is whatever the rank
                       says (the count m d >= C(d+l-1, l) is only necessary: Alexander-Hirschowitz
                       defective cases have lower rank).

Neither model is a CP tensor: both implement `dense_model` (the (d,)*l tensor T_lin(W)) and no
`export`. Both report `linearization_gap` = ||T(W) - T_lin(W)|| / ||T*|| in their extras. The dense
d^l tensor is used throughout (lazy widths are ~ d^{l-1}, so d stays small); `spec.loss` and `reg` do
not apply.
"""

import dataclasses
import functools
import itertools
import math
from typing import Any, Tuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import optax

from overparam import algorithms, config_lib, memory, network, objectives, optim, registry, tensors
from overparam.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# The basis of unique symmetric entries.

def sym_dim(dim: int, order: int) -> int:
  """C(d + l - 1, l): the dimension of symmetric order-l tensors on R^d."""
  return math.comb(dim + order - 1, order)


@functools.lru_cache(maxsize=32)
def sym_basis(dim: int, order: int):
  """(idx (N, l) sorted multi-indices in lexicographic order, mult (N,), full (d^l,)) as numpy.

  mult[e] = number of dense positions holding entry e; full[p] = unique index of dense position p.
  """
  idx = np.array(list(itertools.combinations_with_replacement(range(dim), order)), np.int64).reshape(-1, order)
  mult = np.array([math.factorial(order) // math.prod(math.factorial(k) for k in np.unique(row, return_counts=True)[1])
                   for row in idx], np.int64)
  base = dim ** np.arange(order - 1, -1, -1, dtype=np.int64)
  dense = np.sort(np.indices((dim,) * order).reshape(order, -1).T, axis=1)
  full = np.searchsorted(idx @ base, dense @ base)
  return idx, mult, full


def to_unique(t: jax.Array, order: int) -> jax.Array:
  """(d,)*l -> (N,) coordinates sqrt(mult_e) sym(t)[e], so ||to_unique(t)|| = ||sym(t)||_F."""
  dim = t.shape[0]
  _, mult, full = sym_basis(dim, order)
  n = mult.shape[0]
  sums = jax.ops.segment_sum(t.reshape(-1), jnp.asarray(full), num_segments=n)
  return sums / jnp.sqrt(jnp.asarray(mult, t.dtype))


def from_unique(u: jax.Array, dim: int, order: int) -> jax.Array:
  """Inverse of to_unique on symmetric tensors: (N,) -> (d,)*l."""
  _, mult, full = sym_basis(dim, order)
  return (u / jnp.sqrt(jnp.asarray(mult, u.dtype)))[jnp.asarray(full)].reshape((dim,) * order)


# ----------------------------------------------------------------------------------------------
# Memory estimate of lazy_exact (memory.check uses it before anything is allocated).

def params_per_component(parametrization: str, dim: int) -> int:
  return dim + 1 if parametrization == 'cp' else dim


def exact_bytes_per_run(order: int, dim: int, bucket: int, parametrization: str, dtype_bytes: int) -> int:
  """Peak bytes of one run of the per-width path (widths = ()), with a 2x margin.

  J is N x P (N = C(d+l-1, l), P = bucket * params per component); with its forward-mode
  construction, the Gram matrix (min(N, P)^2 <= N P), its eigenvectors and LAPACK workspace, XLA's
  peak measured 2.6 N P words per run on CPU (l = 3, d = 24, bucket 128, 4 runs vmapped); 5 N P.
  """
  n = sym_dim(dim, order)
  p = bucket * params_per_component(parametrization, dim)
  return dtype_bytes * (5 * n * p + 4 * dim ** order)


def exact_program_bytes(order: int, dim: int, parametrization: str, dtype_bytes: int, widths, runs: int) -> int:
  """Peak bytes of one grid-path program: `runs` seeds, widths = the grid (P = max(widths) k).

  Per seed (vmapped): J, its forward-mode construction, J with the G right-hand sides, and the
  factorization's output (S = min(N, P) rows): 3 N P + S P words, plus G dense models. Once (the
  factorization and the solves run one seed at a time): the scan's copy of J and its update
  (2 N P), the panels' coefficients and their concatenation (2 P^2), the compacted and masked
  coefficients (2 S P), the Gram matrices (4 S^2). No margin: at l = 3, d = 32, 1 seed this gives
  1.5x XLA's own accounting (2.9 GB temporaries).
  """
  n = sym_dim(dim, order)
  p = max(widths) * params_per_component(parametrization, dim)
  g, s = len(widths), min(n, p)
  per_seed = 3 * n * p + s * p + 4 * g * dim ** order
  once = 2 * n * p + 2 * p * p + 2 * s * p + 4 * s * s
  return dtype_bytes * (runs * per_seed + once)


# ----------------------------------------------------------------------------------------------
# Pytree helpers.

def _sub(a, b):
  return optax.tree_utils.tree_sub(a, b)


def _sq(tree):
  return optax.tree_utils.tree_norm(tree, squared=True)


def _probe_like(tree):
  """A fixed quasi-random tree (power-iteration start): entry k of row i of leaf j is
  sin(1 + j + phi (i * row_size + k)), so a width-m prefix does not depend on the bucket, and the
  two halves of a doubled model differ (a start in the null space of J is not generic)."""
  leaves, treedef = jax.tree.flatten(tree)
  out = []
  for j, x in enumerate(leaves):
    row = math.prod(x.shape[1:])
    n = jnp.arange(x.shape[0] * row, dtype=x.dtype).reshape(x.shape)
    out.append(jnp.sin(1.0 + j + 0.6180339887498949 * n))
  return jax.tree.unflatten(treedef, out)


def dense_target(target: tensors.Target, order: int) -> jax.Array:
  if target.dense is not None:
    return target.dense
  return tensors.dense_cp(target.coeffs, target.factors, order)


# ----------------------------------------------------------------------------------------------
# Least squares on J.

def apply_step(p0, delta, symmetric_init: bool):
  """W0 + delta for a min-norm step `delta` (a pytree like the undoubled params). With symmetric_init
  the min-norm step over (W+, W-), where J = [J0, -J0], is split in halves: W+ += delta/2, W- -= delta/2."""
  if symmetric_init:
    return {'minus': jax.tree.map(lambda a, b: a - 0.5 * b, p0['minus'], delta),
            'plus': jax.tree.map(lambda a, b: a + 0.5 * b, p0['plus'], delta)}
  return jax.tree.map(jnp.add, p0, delta)


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
# The linearized model.

@dataclasses.dataclass(frozen=True)
class _Linearized(algorithms.Algorithm):
  """Model, init and linearization shared by Lazy and LazyExact (see the module docstring)."""
  spec: objectives.Spec
  dim: int
  bucket: int
  steps: int
  eps: float = 1e-2
  init_scale: float = 1.0
  symmetric_init: bool = False
  ntk_scaling: bool = False
  dtype: Any = jnp.float32

  def _scale(self, data: algorithms.RunData):
    return jax.lax.rsqrt(data.width.astype(self.dtype)) if self.ntk_scaling else jnp.ones((), self.dtype)

  def _single(self, params, data: algorithms.RunData) -> jax.Array:
    c, v = objectives.canonical(params, self.spec.parametrization, data.signs)
    return tensors.dense_cp(self._scale(data) * c * data.mask, v, self.spec.order)

  def model(self, params, data: algorithms.RunData) -> jax.Array:
    """T(W), dense (d,)*l."""
    if self.symmetric_init:
      return self._single(params['plus'], data) - self._single(params['minus'], data)
    return self._single(params, data)

  def init_params(self, data: algorithms.RunData):
    p = objectives.init_params(data.init_key, self.spec.parametrization, self.bucket, self.dim,
                               self.init_scale, self.dtype)
    return {'minus': p, 'plus': p} if self.symmetric_init else p

  def linearize(self, params0, data: algorithms.RunData):
    """(T(W0), the linear map dW -> J_{W0} dW), by jax.linearize."""
    return jax.linearize(lambda p: self.model(p, data), params0)

  def t_lin(self, params, params0, t0, data: algorithms.RunData) -> jax.Array:
    """T_lin(W) = T(W0) + J_{W0} (W - W0)."""
    _, lin = self.linearize(params0, data)
    return t0 + lin(_sub(params, params0))

  def _state(self, params, params0, t0, data, rel, aux) -> algorithms.RunState:
    return algorithms.RunState(
        params=params, opt_state=(), params0=params0, step=jnp.zeros((), jnp.int32),
        status=jnp.full((), algorithms.RUNNING, jnp.int32), rel_err=rel.astype(self.dtype),
        aux={'t0': t0, **aux})

  def dense_model(self, state: algorithms.RunState, data: algorithms.RunData) -> jax.Array:
    return self.t_lin(state.params, state.params0, state.aux['t0'], data)

  def extras(self, state: algorithms.RunState, data: algorithms.RunData):
    gap = self.model(state.params, data) - _Linearized.dense_model(self, state, data)
    return {'linearization_gap': jnp.sqrt(jnp.sum(gap * gap) / data.target_sq),
            'sym_dim': jnp.asarray(sym_dim(self.dim, self.spec.order), jnp.int32)}

  def trace(self, state: algorithms.RunState, data: algorithms.RunData):
    return {'rel_error': state.rel_err, 'step': state.step}

  def _rel(self, model, data):
    r = model - dense_target(data.target, self.spec.order)
    return jnp.sqrt(jnp.sum(r * r) / data.target_sq)


@dataclasses.dataclass(frozen=True)
class Lazy(_Linearized):
  """GD (optax.sgd; Nesterov if momentum > 0) on the linearized model, step lr_scale / lambda_max(J^T J)."""
  lr_scale: float = 1.0
  power_iters: int = 100
  momentum: float = 0.0
  optimizer: Any = optim.Optimizer()  # an optim.Optimizer, or an optax alias name; lr = the power-iteration step

  def _opt(self, lr):
    opt = optim.as_optimizer(self.optimizer)
    extra = dict(momentum=self.momentum, nesterov=True) if (opt.name == 'sgd' and self.momentum) else {}
    return opt.make(lr, self.steps, **extra)

  def lambda_max(self, params0, data: algorithms.RunData) -> jax.Array:
    """Largest eigenvalue of J^T J by power iteration on v -> J^T (J v); Rayleigh quotient at the end."""
    _, lin = self.linearize(params0, data)
    lin_t = jax.linear_transpose(lin, params0)
    normalize = lambda v: jax.tree.map(lambda x: x * jax.lax.rsqrt(jnp.maximum(_sq(v), jnp.finfo(self.dtype).tiny)), v)
    v = normalize(_probe_like(params0))
    v = jax.lax.fori_loop(0, self.power_iters, lambda _, v: normalize(lin_t(lin(v))[0]), v)
    return _sq(lin(v))

  def init(self, data: algorithms.RunData) -> algorithms.RunState:
    p0 = self.init_params(data)
    t0 = self.model(p0, data)
    lam = self.lambda_max(p0, data)
    lr = self.lr_scale / lam
    state = self._state(p0, p0, t0, data, self._rel(t0, data), {'lr': lr, 'lambda_max': lam})
    return state._replace(opt_state=self._opt(lr).init(p0))

  def step(self, state: algorithms.RunState, data: algorithms.RunData) -> algorithms.RunState:
    _, lin = self.linearize(state.params0, data)
    t_star = dense_target(data.target, self.spec.order)

    def loss(p):
      r = state.aux['t0'] + lin(_sub(p, state.params0)) - t_star
      dl = 0.5 * jnp.sum(r * r)
      return dl, dl

    out, grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    return algorithms.guarded_update(state, out, grads, self._opt(state.aux['lr']), self.eps, self.steps,
                                     data.target_sq)

  def extras(self, state, data):
    return {**super().extras(state, data), 'step_size': state.aux['lr'], 'lambda_max': state.aux['lambda_max']}


def _from_components(flat: jax.Array, like):
  """Inverse of the component column order: (B k,) -> a pytree shaped like `like` (leaves (B, ...))."""
  leaves, treedef = jax.tree.flatten(like)
  rows = flat.reshape(leaves[0].shape[0], -1)
  out, off = [], 0
  for x in leaves:
    r = math.prod(x.shape[1:])
    out.append(rows[:, off:off + r].reshape(x.shape))
    off += r
  return jax.tree.unflatten(treedef, out)


@dataclasses.dataclass(frozen=True)
class LazyExact(_Linearized):
  """The exact lazy optimum by least squares on J in the unique-entry basis; solved in `init`, `step` is a no-op.

  widths = () (the per-width path): one run is one width (data.width, data.mask), solved by
  min_norm_solve. widths = (m_1 < ... < m_G) with bucket = m_G (the grid path, `one_program`): one
  run is one seed, all G widths from one factorization of J at width m_G (factor_components,
  prefix_min_norm); every leaf of its state has a leading width axis G, entry j being exactly the
  state the per-width path computes for width m_j in a bucket of m_G (same init, same numbers to
  rounding), and dense_model / extras return a leading axis G too. panel_cols: the
  factorization's panel width (columns).
  """
  widths: Tuple[int, ...] = ()
  panel_cols: int = 512

  def __post_init__(self):
    if self.widths and (list(self.widths) != sorted(set(self.widths)) or self.widths[-1] != self.bucket):
      raise ValueError(f'widths must be increasing and end at bucket={self.bucket}, got {self.widths}')

  def unique_jacobian(self, params, data: algorithms.RunData) -> jax.Array:
    """J of the undoubled model at `params` in weighted unique coordinates: (N, P), P = B x params per
    component, columns in jax.flatten_util.ravel_pytree order.

    The model is separable over components (canonical is row-wise), so J is built per component by
    forward mode on the monomials sqrt(mult_e) c_i prod_q v_i[e_q]: O(N P l), never a (d^l, P) array.
    """
    jac = self._component_jacobians(params, data.signs, self._scale(data) * data.mask)
    n = sym_dim(self.dim, self.spec.order)
    return jnp.concatenate([jnp.moveaxis(x, 1, 0).reshape(n, -1) for x in jax.tree.leaves(jac)], axis=1)

  def component_jacobian(self, params, signs) -> jax.Array:
    """J of the undoubled, unscaled model with every component real: (N, B k), columns in component
    order (component i's k = params_per_component columns, its leaves in ravel order, are columns
    [i k, (i+1) k)), so a width-m prefix is the first m k columns."""
    jac = self._component_jacobians(params, signs, jnp.ones(signs.shape, self.dtype))
    n = sym_dim(self.dim, self.spec.order)
    blocks = [x.reshape(x.shape[0], n, -1) for x in jax.tree.leaves(jac)]  # (B, N, params of the leaf)
    return jnp.moveaxis(jnp.concatenate(blocks, axis=2), 0, 1).reshape(n, -1)

  def _component_jacobians(self, params, signs, weights):
    """Per-component Jacobians (leaves (B, N, ...)) of weights_i c_i v_i^{(x)l} in unique coordinates."""
    order = self.spec.order
    idx, mult, _ = sym_basis(self.dim, order)
    idx = jnp.asarray(idx)
    w = jnp.sqrt(jnp.asarray(mult, self.dtype))

    def component(p_i, s_i, a_i):
      c, v = objectives.canonical(jax.tree.map(lambda x: x[None], p_i), self.spec.parametrization, s_i[None])
      return a_i * c[0] * w * jnp.prod(v[0][idx], axis=1)

    return jax.vmap(jax.jacfwd(component))(params, signs, weights)

  def _width_data(self, data: algorithms.RunData, width) -> algorithms.RunData:
    """data of a width-`width` run in this bucket (the grid path's runs carry width = bucket)."""
    return data._replace(mask=(jnp.arange(self.bucket) < width).astype(data.mask.dtype),
                         width=jnp.asarray(width, data.width.dtype))

  def _finish(self, p0, t0, delta, rank, data: algorithms.RunData) -> algorithms.RunState:
    """The state of the min-norm step `delta` (a pytree like the undoubled params) from W0 = p0."""
    params = apply_step(p0, delta, self.symmetric_init)
    model = self.t_lin(params, p0, t0, data)
    return self._state(params, p0, t0, data, self._rel(model, data), {'tangent_rank': rank})

  def init(self, data: algorithms.RunData) -> algorithms.RunState:
    if self.widths:
      return self._init_grid(data)
    order = self.spec.order
    p0 = self.init_params(data)
    t0 = self.model(p0, data)
    base = p0['plus'] if self.symmetric_init else p0
    jac = self.unique_jacobian(base, data)
    b = to_unique(dense_target(data.target, order) - t0, order)
    rank, delta_flat = min_norm_solve(jac, b, data.width.astype(self.dtype) * params_per_component(
        self.spec.parametrization, self.dim))
    _, unravel = jax.flatten_util.ravel_pytree(base)
    return self._finish(p0, t0, unravel(delta_flat), rank, data)

  def _init_grid(self, data: algorithms.RunData) -> algorithms.RunState:
    """Every width of the grid from one factorization of J at width bucket = widths[-1].

    J_m = s_m K_m (K unscaled, s_m = 1/sqrt(m) under ntk_scaling, else 1) has the column span and
    the numerical rank of K_m, and J_m^+ b = K_m^+ b / s_m. Without symmetric_init T_m(W0) depends
    on m, so each width has its own right-hand side b_m = T* - T_m(W0), carried through the
    factorization as an extra column.
    """
    order, k = self.spec.order, params_per_component(self.spec.parametrization, self.dim)
    p0 = self.init_params(data)
    base = p0['plus'] if self.symmetric_init else p0
    ws = jnp.asarray(self.widths, data.width.dtype)
    t0s = jax.vmap(lambda w: self.model(p0, self._width_data(data, w)))(ws)  # (G, d, ..., d)
    t_star = dense_target(data.target, order)
    rhs = jax.vmap(lambda t0: to_unique(t_star - t0, order), out_axes=1)(t0s)  # (N, G)
    jac = self.component_jacobian(base, data.signs)
    n, cols = jac.shape
    # A direction counts when its residual exceeds sqrt(max(N, P) eps) x the largest column norm of
    # component 0: min_norm_solve's threshold with that norm for sigma_max (<= every sigma_max(J_m)),
    # orders of magnitude above the rounding floor of a dependent column.
    tau = jnp.sqrt(max(n, cols) * jnp.finfo(self.dtype).eps) * jnp.max(jnp.linalg.norm(jac[:, :k], axis=0))
    # Both one seed at a time under the engine's vmap: their temporaries (J's copy, the panels'
    # coefficients, the Gram matrices) then exist for one seed only, and their loops compile once.
    factor = one_at_a_time(lambda a, tau: factor_components(a, cols, k, tau, self.panel_cols))
    solve = one_at_a_time(lambda coef, s, comp: prefix_min_norm(coef, s, comp, self.widths, k, n))
    ranks, xs = solve(*factor(jnp.concatenate([jac, rhs], axis=1), tau))

    def finish(w, t0, x, rank):
      d = self._width_data(data, w)
      return self._finish(p0, t0, _from_components(x / self._scale(d), base), rank, d)
    return jax.vmap(finish)(ws, t0s, xs, ranks)

  def _per_width(self, fn, state, data):
    """fn(state_j, data_j) for every width of the grid, stacked on a leading axis."""
    ws = jnp.asarray(self.widths, data.width.dtype)
    return jax.vmap(lambda st, w: fn(st, self._width_data(data, w)))(state, ws)

  def step(self, state: algorithms.RunState, data: algorithms.RunData) -> algorithms.RunState:
    return state

  def dense_model(self, state, data):
    if self.widths:
      return self._per_width(super().dense_model, state, data)
    return super().dense_model(state, data)

  def extras(self, state, data):
    single = lambda st, d: {**_Linearized.extras(self, st, d), 'tangent_rank': st.aux['tangent_rank']}
    return self._per_width(single, state, data) if self.widths else single(state, data)

  def trace(self, state, data):
    return self._per_width(super().trace, state, data) if self.widths else super().trace(state, data)


# ---------------------------------------------------------------------------------------------
# Registration: `lazy` owns config.lazy; `lazy_exact` reads its symmetric_init and ntk_scaling.

# symmetric_init: doubled +/- init, T(W0) = 0; ntk_scaling: T = (1/sqrt(m)) sum_i ...; `lazy` steps
# lr_scale / lambda_max(J^T J) (power_iters iterations of power iteration), with the optimizer of
# config.optimizer (sgd: Nesterov momentum `momentum`, 0: plain GD).
DEFAULTS = dict(symmetric_init=False, ntk_scaling=False, lr_scale=1.0, momentum=0.0, power_iters=100)
_MODEL_FIELDS = ('init_scale', 'parametrization', 'signs', 'lazy.symmetric_init', 'lazy.ntk_scaling')


def validate(c):
  z = c.lazy
  for name in ('symmetric_init', 'ntk_scaling'):
    if not isinstance(z[name], bool):
      raise ConfigError(f'config.lazy.{name} must be True or False, got {z[name]!r}')
  config_lib.check_finite('lazy.lr_scale', z.lr_scale, 0.0, True, 2.0, True)
  config_lib.check_finite('lazy.momentum', z.momentum, 0.0, False, 1.0, True)
  if not config_lib.is_int(z.power_iters) or z.power_iters < 1:
    raise ConfigError(f'config.lazy.power_iters must be an integer >= 1, got {z.power_iters!r}')
  if 'lazy' in c.algorithms and z.momentum and c.optimizer != 'sgd':
    raise ConfigError(f'config.lazy.momentum applies to optimizer=sgd only (got optimizer={c.optimizer!r}); '
                      'set it to 0 or pass the optimizer\'s own arguments in config.optimizer_kwargs')


def _kwargs(c, dim: int, bucket: int):
  spec = objectives.Spec(c.order, c.parametrization, 'dense', 0.0)
  return dict(spec=spec, dim=dim, bucket=bucket, eps=network.stop_eps(c), init_scale=c.init_scale,
              symmetric_init=c.lazy.symmetric_init, ntk_scaling=c.lazy.ntk_scaling, dtype=config_lib.dtype_of(c))


def build_lazy(c, dim: int, bucket: int) -> Lazy:
  if c.loss == 'samples':  # GD on the linearized network outputs on the training set
    from overparam import lazy_samples  # noqa: PLC0415 - lazy_samples subclasses this module's classes
    return lazy_samples.LazySamples(
        steps=c.steps, lr_scale=c.lazy.lr_scale, momentum=c.lazy.momentum, power_iters=c.lazy.power_iters,
        optimizer=optim.from_config(c), sampling=network.sample_spec_of(c), **_kwargs(c, dim, bucket))
  return Lazy(steps=c.steps, lr_scale=c.lazy.lr_scale, momentum=c.lazy.momentum, power_iters=c.lazy.power_iters,
              optimizer=optim.from_config(c), **_kwargs(c, dim, bucket))


def build_lazy_exact(c, dim: int, bucket: int, widths=()) -> LazyExact:
  """widths: the grid of the engine's one program (the grid path); () the per-width path."""
  if c.loss == 'samples':  # min-norm least squares on the samples: tangent-kernel regression (per width)
    from overparam import lazy_samples  # noqa: PLC0415 - lazy_samples subclasses this module's classes
    return lazy_samples.LazyExactSamples(steps=1, sampling=network.sample_spec_of(c), **_kwargs(c, dim, bucket))
  return LazyExact(steps=1, widths=tuple(widths), **_kwargs(c, dim, bucket))


def lazy_words_per_run(c, dim: int, bucket: int, rank: int) -> int:
  """Parameters and copies, optimizer state, T*, T(W0), T_lin and the residual (d^l each), the
  linearization's residuals and the power iterate."""
  order = c.order
  params = bucket * memory.params_per_component(c.parametrization, dim)
  opt = optim.from_config(c)
  extra = dict(momentum=c.lazy.momentum, nesterov=True) if (opt.name == 'sgd' and c.lazy.momentum) else {}
  opt_words = memory.optimizer_words(dataclasses.replace(opt, kwargs=opt.kwargs + tuple(sorted(extra.items()))),
                                     params, c.steps)
  return (5 * params + opt_words + 6 * dim ** order + (order + 2) * bucket * dim ** (order - 1) + 2 * params
          + network.sample_words(c, dim, bucket) + (2 * c.num_samples if c.loss == 'samples' else 0))


def exact_bytes(c, dim: int, bucket: int, rank: int, runs: int = 1) -> int:
  """Tensor targets (one program per d): the whole program's bytes, runs = seeds per device, its grid
  config_lib.widths_of(c, 'lazy_exact'). loss=samples (width buckets): one run's bytes, J_F being
  num_samples x params (lazy_samples.exact_bytes_per_run)."""
  if c.loss == 'samples':
    p = bucket * params_per_component(c.parametrization, dim)
    return (8 if c.x64 else 4) * (5 * c.num_samples * p + 2 * c.num_samples * dim + 4 * dim ** c.order)
  widths = tuple(sorted(set(int(w) for w in config_lib.widths_of(c, 'lazy_exact'))))
  return exact_program_bytes(c.order, dim, c.parametrization, 8 if c.x64 else 4, widths, runs)


def exact_detail(c, dim: int, bucket: int) -> str:
  if c.loss == 'samples':
    return (f'J_F of {c.num_samples} x {bucket * params_per_component(c.parametrization, dim)} '
            '(num_samples x params) per run')
  return (f'J of {sym_dim(dim, c.order)} x {bucket * params_per_component(c.parametrization, dim)} '
          '(C(d+l-1,l) x params) per seed')


LAZY_SPEC = registry.AlgorithmSpec(
    name='lazy', build=build_lazy, defaults=DEFAULTS, validate=validate, words_per_run=lazy_words_per_run,
    reads=_MODEL_FIELDS + network.SAMPLE_FIELDS + optim.FIELDS,
    row_fields=('linearization_gap', 'sym_dim', 'step_size', 'lambda_max', 'train_error'), lazy=True)
LAZY_EXACT_SPEC = registry.AlgorithmSpec(
    name='lazy_exact', build=build_lazy_exact, bytes_per_run=exact_bytes, memory_detail=exact_detail,
    reads=_MODEL_FIELDS + network.SAMPLE_FIELDS,
    row_fields=('linearization_gap', 'sym_dim', 'tangent_rank', 'train_error', 'feature_rank'), lazy=True,
    one_program=lambda c: c.loss != 'samples')  # the grid factorization is for tensor targets
