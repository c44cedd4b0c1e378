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
                       sqrt(multiplicity), an isometry on symmetric tensors; overparam/symmetric.py).
                       One width (overparam.fit): the eigendecomposition of the Gram matrix
                       (lstsq.min_norm_solve). The engine's grid path (`with_grid(widths)`): a whole
                       width grid per seed from one rank-revealing factorization of J at the largest
                       width (the inits are nested, so J_m is a column prefix of J_M): one LAPACK
                       Householder QR per seed (lstsq.rotate_components, qr_components,
                       solve_prefixes; method 'qr', the default) or the block Gram-Schmidt
                       (lstsq.factor_components, prefix_min_norm; method 'gs'). Reports the numerical rank of J (`tangent_rank`) and the
                       dimension count `sym_dim` = C(d+l-1, l); the lazy threshold is whatever the rank
                       says (the count m d >= C(d+l-1, l) is only necessary: Alexander-Hirschowitz
                       defective cases have lower rank).

Neither model is a CP tensor: both implement `dense_model` (the (d,)*l tensor T_lin(W)) and no
`export`. Both report `linearization_gap` = ||T(W) - T_lin(W)|| / ||T*|| in their extras. The dense
d^l tensor is used throughout (lazy widths are ~ d^{l-1}, so d stays small): the task's loss kind
(dense or implicit) does not apply; loss = 'samples' is overparam/linearized_samples.py.
"""

import dataclasses
import math
from typing import Any, Optional, Tuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from overparam import checks, core, lstsq, memory, objectives, optim, tensors
from overparam.core import RunData, RunState, Task
from overparam.gradient_descent import SIGNS
from overparam.symmetric import sym_basis, sym_dim, to_unique

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


def apply_step(p0, delta, symmetric_init: bool):
  """W0 + delta for a min-norm step `delta` (a pytree like the undoubled params). With symmetric_init
  the min-norm step over (W+, W-), where J = [J0, -J0], is split in halves: W+ += delta/2, W- -= delta/2."""
  if symmetric_init:
    return {'minus': jax.tree.map(lambda a, b: a - 0.5 * b, p0['minus'], delta),
            'plus': jax.tree.map(lambda a, b: a + 0.5 * b, p0['plus'], delta)}
  return jax.tree.map(jnp.add, p0, delta)


# ----------------------------------------------------------------------------------------------
# The linearized model.

@dataclasses.dataclass(frozen=True)
class Linearized(core.Algorithm):
  """Model, init and linearization shared by Lazy and LazyExact (see the module docstring)."""
  init_scale: Any
  parametrization: str = core.static()
  signs: str = core.static()
  symmetric_init: bool = core.static()
  ntk_scaling: bool = core.static()

  needs_dense_target = True

  def _scale(self, data: RunData):
    dtype = core.dtype_of(data)
    return jax.lax.rsqrt(data.width.astype(dtype)) if self.ntk_scaling else jnp.ones((), dtype)

  def _signs(self, data: RunData):
    return core.signs_vector(self.signs, core.dims_of(data)[0], core.dtype_of(data))

  def _single(self, task: Task, params, data: RunData) -> jax.Array:
    c, v = objectives.canonical(params, self.parametrization, self._signs(data))
    return tensors.dense_cp(self._scale(data) * c * data.mask, v, task.order)

  def model(self, task: Task, params, data: RunData) -> jax.Array:
    """T(W), dense (d,)*l."""
    if self.symmetric_init:
      return self._single(task, params['plus'], data) - self._single(task, params['minus'], data)
    return self._single(task, params, data)

  def init_params(self, data: RunData):
    bucket, dim = core.dims_of(data)
    p = objectives.init_params(data.init_key, self.parametrization, bucket, dim, self.init_scale, core.dtype_of(data))
    return {'minus': p, 'plus': p} if self.symmetric_init else p

  def linearize(self, task: Task, params0, data: RunData):
    """(T(W0), the linear map dW -> J_{W0} dW), by jax.linearize."""
    return jax.linearize(lambda p: self.model(task, p, data), params0)

  def t_lin(self, task: Task, params, params0, t0, data: RunData) -> jax.Array:
    """T_lin(W) = T(W0) + J_{W0} (W - W0)."""
    _, lin = self.linearize(task, params0, data)
    return t0 + lin(_sub(params, params0))

  def _state(self, params, params0, t0, data, rel, aux) -> RunState:
    return core.new_state(params, (), params0, core.dtype_of(data), rel_err=rel, aux={'t0': t0, **aux})

  def dense_model(self, task: Task, state: RunState, data: RunData) -> jax.Array:
    return self.t_lin(task, state.params, state.params0, state.aux['t0'], data)

  def extras(self, task: Task, state: RunState, data: RunData):
    gap = self.model(task, state.params, data) - Linearized.dense_model(self, task, state, data)
    _, dim = core.dims_of(data)
    return {'linearization_gap': jnp.sqrt(jnp.sum(gap * gap) / data.target_sq),
            'sym_dim': jnp.asarray(sym_dim(dim, task.order), jnp.int32)}

  def trace(self, task: Task, state: RunState, data: RunData):
    return {'rel_error': state.rel_err, 'step': state.step}

  def _rel(self, task: Task, model, data):
    r = model - objectives.dense_target(data.target, task.order)
    return jnp.sqrt(jnp.sum(r * r) / data.target_sq)


@core.register
@dataclasses.dataclass(frozen=True)
class Lazy(Linearized):
  """GD (its optimizer; Nesterov momentum for sgd) on the linearized model, step lr_scale / lambda_max(J^T J).
  Build it with `lazy(...)`."""
  lr_scale: Any = None
  momentum: Any = None
  power_iters: int = core.static(100)
  optimizer: optim.Optimizer = core.static(optim.Optimizer())
  momentum_model: bool = core.static(False)  # False: momentum is 0 (plain steps, no momentum state)

  def _opt(self, task: Task, lr):
    opt = optim.as_optimizer(self.optimizer)
    extra = dict(momentum=self.momentum, nesterov=True) if (opt.name == 'sgd' and self.momentum_model) else {}
    return opt.make(lr, task.steps, **extra)

  def lambda_max(self, task: Task, params0, data: RunData) -> jax.Array:
    """Largest eigenvalue of J^T J by power iteration on v -> J^T (J v); Rayleigh quotient at the end."""
    _, lin = self.linearize(task, params0, data)
    lin_t = jax.linear_transpose(lin, params0)
    tiny = jnp.finfo(core.dtype_of(data)).tiny
    normalize = lambda v: jax.tree.map(lambda x: x * jax.lax.rsqrt(jnp.maximum(_sq(v), tiny)), v)
    v = normalize(_probe_like(params0))
    v = jax.lax.fori_loop(0, self.power_iters, lambda _, v: normalize(lin_t(lin(v))[0]), v)
    return _sq(lin(v))

  def init(self, task: Task, data: RunData) -> RunState:
    p0 = self.init_params(data)
    t0 = self.model(task, p0, data)
    lam = self.lambda_max(task, p0, data)
    lr = self.lr_scale / lam
    state = self._state(p0, p0, t0, data, self._rel(task, t0, data), {'lr': lr, 'lambda_max': lam})
    return state._replace(opt_state=self._opt(task, lr).init(p0))

  def step(self, task: Task, state: RunState, data: RunData) -> RunState:
    _, lin = self.linearize(task, state.params0, data)
    t_star = objectives.dense_target(data.target, task.order)

    def loss(p):
      r = state.aux['t0'] + lin(_sub(p, state.params0)) - t_star
      dl = 0.5 * jnp.sum(r * r)
      return dl, dl

    out, grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    return core.guarded_update(task, state, out, grads, self._opt(task, state.aux['lr']), data)

  def extras(self, task: Task, state: RunState, data: RunData):
    return {**super().extras(task, state, data), 'step_size': state.aux['lr'], 'lambda_max': state.aux['lambda_max']}

  @classmethod
  def unify(cls, algs):
    """A momentum axis that includes 0 runs every value with the momentum state."""
    if any(a.momentum_model for a in algs):
      return [dataclasses.replace(a, momentum_model=True) for a in algs]
    return list(algs)


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


@core.register
@dataclasses.dataclass(frozen=True)
class LazyExact(Linearized):
  """The exact lazy optimum by least squares on J in the unique-entry basis; solved in `init`, which
  returns a finished run (status STOPPED; `step` is a no-op). Build it with `lazy_exact(...)`.

  widths = () (one width): one run is one width (data.width, data.mask), solved by min_norm_solve.
  widths = (m_1 < ... < m_G) with bucket = m_G (the engine's grid path, `with_grid`): one run is one
  seed, all G widths from one factorization of J at width m_G; every leaf of its state has a leading
  width axis G, entry j being exactly the state the one-width path computes for width m_j in a
  bucket of m_G (same init, same numbers to rounding), and dense_model / extras return a leading axis
  G too. method: 'qr' (the default: one LAPACK Householder QR per seed, lstsq.rotate_components,
  qr_components, solve_prefixes; `slots` zero columns for deflations, None: one per column, always
  enough) or 'gs' (the block Gram-Schmidt written in jax, lstsq.factor_components and
  prefix_min_norm, ~3x the flops; kept as a second implementation for the tests); panel_cols: the
  'gs' factorization's panel width (columns).
  """
  widths: Tuple[int, ...] = core.static(())
  method: str = core.static('qr')
  slots: Optional[int] = core.static(8)
  panel_cols: int = core.static(512)

  def with_grid(self, widths) -> 'LazyExact':
    """This algorithm on the grid path over `widths` (increasing; the bucket is widths[-1])."""
    widths = tuple(int(w) for w in widths)
    if list(widths) != sorted(set(widths)):
      raise ValueError(f'widths must be increasing, got {widths}')
    if self.method not in ('qr', 'gs'):
      raise ValueError(f"method must be 'qr' or 'gs', got {self.method!r}")
    return dataclasses.replace(self, widths=widths)

  def compiler_options(self, task: Task, fn: str, data: RunData) -> Optional[dict]:
    """The grid path's init at LLVM optimization level 0 when J is small (N P <= 2^24 words, d <= 24 at
    the main job's grid): there its compile time dominates and the work is LAPACK and library dots,
    which XLA's optimization level does not touch (measured, init of the main job's program: d = 24
    compile -1.9 s CPU, execution +0.25 s; d = 32 compile -2.2 s, execution +3.5 s, hence the bound).
    Numbers change by rounding only (rel_error by <= 4e-12)."""
    if fn != 'init' or not self.widths:
      return None
    bucket, dim = core.dims_of(data)
    n = sym_dim(dim, task.order)
    p = bucket * memory.params_per_component(self.parametrization, dim)
    return {'xla_backend_optimization_level': 0} if n * p <= 1 << 24 else None

  def retry(self, task: Task, state: RunState) -> Optional['LazyExact']:
    """Engine hook: the 'qr' grid path reports a deflation that did not fit its `slots` zero columns in
    aux['overflow'] (host state); then the program reruns with a slot for every column (always
    enough)."""
    if not self.widths or self.method != 'qr' or self.slots is None or 'overflow' not in state.aux:
      return None
    if not np.any(np.asarray(state.aux['overflow'])):
      return None
    return dataclasses.replace(self, slots=None)

  def unique_jacobian(self, task: Task, params, data: RunData) -> jax.Array:
    """J of the undoubled model at `params` in weighted unique coordinates: (N, P), P = B x params per
    component, columns in jax.flatten_util.ravel_pytree order.

    The model is separable over components (canonical is row-wise), so J is built per component by
    forward mode on the monomials sqrt(mult_e) c_i prod_q v_i[e_q]: O(N P l), never a (d^l, P) array.
    """
    _, dim = core.dims_of(data)
    jac = self._component_jacobians(task, params, self._signs(data), self._scale(data) * data.mask, dim)
    n = sym_dim(dim, task.order)
    return jnp.concatenate([jnp.moveaxis(x, 1, 0).reshape(n, -1) for x in jax.tree.leaves(jac)], axis=1)

  def component_jacobian(self, task: Task, params, signs, dim: int) -> jax.Array:
    """J of the undoubled, unscaled model with every component real: (N, B k), columns in component
    order (component i's k = params_per_component columns, its leaves in ravel order, are columns
    [i k, (i+1) k)), so a width-m prefix is the first m k columns."""
    jac = self._component_jacobians(task, params, signs, jnp.ones(signs.shape, signs.dtype), dim)
    n = sym_dim(dim, task.order)
    blocks = [x.reshape(x.shape[0], n, -1) for x in jax.tree.leaves(jac)]  # (B, N, params of the leaf)
    return jnp.moveaxis(jnp.concatenate(blocks, axis=2), 0, 1).reshape(n, -1)

  def component_rows(self, task: Task, params, signs, dim: int) -> jax.Array:
    """component_jacobian's columns as rows, per component: (B, k, N), row j of block i = column
    i k + j (jvp along each parameter of the component: the layout the QR path gathers from, with
    no transposed copy)."""
    idx, mult, _ = sym_basis(dim, task.order)
    idx = jnp.asarray(idx)
    w = jnp.sqrt(jnp.asarray(mult, signs.dtype))
    p_i = jax.tree.map(lambda x: x[0], params)
    flat0, unravel = jax.flatten_util.ravel_pytree(p_i)

    def component(flat, s_i):
      c, v = objectives.canonical(jax.tree.map(lambda x: x[None], unravel(flat)), self.parametrization, s_i[None])
      return c[0] * w * jnp.prod(v[0][idx], axis=1)

    def rows(flat, s_i):
      return jax.vmap(lambda e: jax.jvp(lambda f: component(f, s_i), (flat,), (e,))[1])(
          jnp.eye(flat0.shape[0], dtype=flat0.dtype))
    flats = jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(params)
    return jax.vmap(rows)(flats, signs)

  def _component_jacobians(self, task: Task, params, signs, weights, dim: int):
    """Per-component Jacobians (leaves (B, N, ...)) of weights_i c_i v_i^{(x)l} in unique coordinates."""
    order = task.order
    idx, mult, _ = sym_basis(dim, order)
    idx = jnp.asarray(idx)
    w = jnp.sqrt(jnp.asarray(mult, weights.dtype))

    def component(p_i, s_i, a_i):
      c, v = objectives.canonical(jax.tree.map(lambda x: x[None], p_i), self.parametrization, s_i[None])
      return a_i * c[0] * w * jnp.prod(v[0][idx], axis=1)

    return jax.vmap(jax.jacfwd(component))(params, signs, weights)

  def _width_data(self, data: RunData, width) -> RunData:
    """data of a width-`width` run in this bucket (the grid path's runs carry width = bucket)."""
    bucket, _ = core.dims_of(data)
    return data._replace(mask=(jnp.arange(bucket) < width).astype(data.mask.dtype),
                         width=jnp.asarray(width, data.width.dtype))

  def _finish(self, task: Task, p0, t0, delta, rank, data: RunData) -> RunState:
    """The finished state of the min-norm step `delta` (a pytree like the undoubled params) from W0 = p0."""
    params = apply_step(p0, delta, self.symmetric_init)
    model = self.t_lin(task, params, p0, t0, data)
    rel = self._rel(task, model, data)
    state = self._state(params, p0, t0, data, rel, {'tangent_rank': rank})
    return state._replace(status=jnp.full_like(state.status, core.STOPPED))

  def init(self, task: Task, data: RunData) -> RunState:
    if self.widths:
      return self._init_grid(task, data)
    order = task.order
    _, dim = core.dims_of(data)
    p0 = self.init_params(data)
    t0 = self.model(task, p0, data)
    base = p0['plus'] if self.symmetric_init else p0
    jac = self.unique_jacobian(task, base, data)
    b = to_unique(objectives.dense_target(data.target, order) - t0, order)
    n_params = data.width.astype(jac.dtype) * memory.params_per_component(self.parametrization, dim)
    rank, delta_flat = lstsq.min_norm_solve(jac, b, n_params)
    _, unravel = jax.flatten_util.ravel_pytree(base)
    return self._finish(task, p0, t0, unravel(delta_flat), rank, data)

  def _init_grid(self, task: Task, data: RunData) -> RunState:
    """Every width of the grid from one factorization of J at width bucket = widths[-1].

    J_m = s_m K_m (K unscaled, s_m = 1/sqrt(m) under ntk_scaling, else 1) has the column span and
    the numerical rank of K_m, and J_m^+ b = K_m^+ b / s_m. Without symmetric_init T_m(W0) depends
    on m, so each width has its own right-hand side b_m = T* - T_m(W0), carried through the
    factorization as an extra column.
    """
    order = task.order
    bucket, dim = core.dims_of(data)
    if self.widths[-1] != bucket:
      raise ValueError(f'the grid {self.widths} must end at the bucket {bucket}')
    if self.method not in ('qr', 'gs'):
      raise ValueError(f"method must be 'qr' or 'gs', got {self.method!r}")
    p0 = self.init_params(data)
    base = p0['plus'] if self.symmetric_init else p0
    ws = jnp.asarray(self.widths, data.width.dtype)
    # Widths one after the other (lax.map), here and in dense_model / extras: the engine already
    # vmaps the seeds, and G widths at once would hold G copies of the dense models' temporaries.
    t0s = jax.lax.map(lambda w: self.model(task, p0, self._width_data(data, w)), ws)  # (G, d, ..., d)
    t_star = objectives.dense_target(data.target, order)
    rhs = jax.lax.map(lambda t0: to_unique(t_star - t0, order), t0s).T  # (N, G)
    leaves, treedef = jax.tree.flatten(base)
    # One seed at a time under the engine's vmap: the Jacobian (built inside), its factorization and
    # their temporaries exist for one seed only, and LAPACK is called unbatched (lstsq.one_at_a_time).
    kernel = self._grid_qr if self.method == 'qr' else self._grid_gs
    solve = lstsq.one_at_a_time(
        lambda signs, rhs, *leaves: kernel(task, jax.tree.unflatten(treedef, leaves), signs, rhs, dim))
    ranks, xs, overflow = solve(self._signs(data), rhs, *leaves)

    def finish(w, t0, x, rank):
      d = self._width_data(data, w)
      st = self._finish(task, p0, t0, _from_components(x / self._scale(d), base), rank, d)
      return st._replace(aux={**st.aux, 'overflow': overflow})
    return jax.lax.map(lambda a: finish(*a), (ws, t0s, xs, ranks))

  def _tau(self, n: int, cols: int, block0_norms):
    """A direction counts when its residual exceeds sqrt(max(N, P) eps) x the largest column norm of
    component 0: min_norm_solve's threshold with that norm for sigma_max (<= every sigma_max(J_m)),
    orders of magnitude above the rounding floor of a dependent column."""
    return jnp.sqrt(max(n, cols) * jnp.finfo(block0_norms.dtype).eps) * jnp.max(block0_norms)

  def _grid_qr(self, task: Task, base, signs, rhs, dim: int):
    """(ranks (G,), x (G, B k) in component order, overflow) for one seed: lstsq.rotate_components,
    qr_components, solve_prefixes."""
    k = memory.params_per_component(self.parametrization, dim)
    n = sym_dim(dim, task.order)
    b = self.widths[-1]
    jt = self.component_rows(task, base, signs, dim)  # (B, k, N)
    cols = b * k
    tau = self._tau(n, cols, jnp.sqrt(jnp.sum(jt[0] * jt[0], axis=1)))
    rot, vec, keep = lstsq.rotate_components(jt, tau)
    slots = cols if self.slots is None else self.slots
    keep = jnp.concatenate([keep.reshape(-1), jnp.zeros((slots,), bool)])
    r, perm, pos, piv, overflow = lstsq.qr_components(rot.reshape(cols, n), keep, rhs, cols, tau,
                                                      max_deflations=cols)
    ranks, y = lstsq.solve_prefixes(r, perm, pos, piv, keep, self.widths, cols, k)
    x = jnp.einsum('bkj,bjg->gbk', vec, y[:cols].reshape(b, k, -1)).reshape(len(self.widths), cols)
    return ranks, x, overflow

  def _grid_gs(self, task: Task, base, signs, rhs, dim: int):
    """The same by block Gram-Schmidt (lstsq.factor_components, prefix_min_norm); never overflows."""
    k = memory.params_per_component(self.parametrization, dim)
    jac = self.component_jacobian(task, base, signs, dim)
    n, cols = jac.shape
    tau = self._tau(n, cols, jnp.linalg.norm(jac[:, :k], axis=0))
    coef, s, comp = lstsq.factor_components(jnp.concatenate([jac, rhs], axis=1), cols, k, tau, self.panel_cols)
    ranks, xs = lstsq.prefix_min_norm(coef, s, comp, self.widths, k, n)
    return ranks, xs, jnp.zeros((), bool)

  def _per_width(self, fn, state, data):
    """fn(state_j, data_j) for every width of the grid, stacked on a leading axis (one width after
    the other: see _init_grid)."""
    ws = jnp.asarray(self.widths, data.width.dtype)
    return jax.lax.map(lambda a: fn(a[0], self._width_data(data, a[1])), (state, ws))

  def step(self, task: Task, state: RunState, data: RunData) -> RunState:
    return state

  def dense_model(self, task: Task, state: RunState, data: RunData):
    one = lambda st, d: Linearized.dense_model(self, task, st, d)
    return self._per_width(one, state, data) if self.widths else one(state, data)

  def extras(self, task: Task, state: RunState, data: RunData):
    single = lambda st, d: {**Linearized.extras(self, task, st, d), 'tangent_rank': st.aux['tangent_rank']}
    return self._per_width(single, state, data) if self.widths else single(state, data)

  def trace(self, task: Task, state: RunState, data: RunData):
    one = lambda st, d: Linearized.trace(self, task, st, d)
    return self._per_width(one, state, data) if self.widths else one(state, data)


# ---------------------------------------------------------------------------------------------
# Constructors.

def _model_args(init_scale, parametrization, signs, symmetric_init, ntk_scaling):
  checks.number('init_scale', init_scale, 0.0, True)
  checks.choice('parametrization', parametrization, objectives.PARAMETRIZATIONS)
  checks.choice('signs', signs, SIGNS)
  return dict(init_scale=init_scale, parametrization=parametrization, signs=signs,
              symmetric_init=checks.boolean('symmetric_init', symmetric_init),
              ntk_scaling=checks.boolean('ntk_scaling', ntk_scaling))


def lazy(*, init_scale=0.3, parametrization: str = 'cp', signs: str = 'positive', symmetric_init: bool = False,
         ntk_scaling: bool = False, lr_scale=1.0, momentum=0.0, power_iters: int = 100, optimizer: str = 'sgd',
         optimizer_kwargs=None, schedule: str = 'constant', schedule_kwargs=None) -> Lazy:
  """Gradient descent on the linearized model T_lin(W) = T(W0) + J_{W0} (W - W0) (jax.linearize).

  Args:
    init_scale: W0 has factors init_scale * Unif(S^{d-1}) and cp coefficients init_scale (a finite number > 0).
    parametrization: cp (c_i u_i^l), power (s_i w_i^l) or homogeneous (s_i ||w_i||^2 (w_i/||w_i||)^l).
    signs: the fixed signs s_i of power and homogeneous: positive or balanced (+1, -1, ...).
    symmetric_init: double the model, T(W+) - T(W-) with W+ = W- = W0, so that T(W0) = 0 (True or False).
    ntk_scaling: scale the model by 1/sqrt(m) (True or False).
    lr_scale: the step is lr_scale / lambda_max(J^T J) (a finite number > 0 and < 2).
    momentum: Nesterov momentum of sgd; 0 is plain GD (a finite number >= 0 and < 1).
    power_iters: power-iteration steps for lambda_max (an integer >= 1; static).
    optimizer: an optax optimizer alias that takes learning_rate (sgd, adam, ...).
    optimizer_kwargs: its other arguments (checked against its signature).
    schedule: the step-size schedule: constant, cosine, ... (overparam/optim.py).
    schedule_kwargs: the schedule's other arguments.

  Returns a Lazy value for overparam.fit (leaves: init_scale, lr_scale, momentum). Its model is not a CP
  tensor: fit returns the dense T_lin(W) as `model` and no coeffs/factors.
  """
  args = _model_args(init_scale, parametrization, signs, symmetric_init, ntk_scaling)
  checks.number('lr_scale', lr_scale, 0.0, True, 2.0, True)
  checks.number('momentum', momentum, 0.0, False, 1.0, True)
  power_iters = checks.integer('power_iters', power_iters, 1)
  opt = optim.optimizer(optimizer, optimizer_kwargs, schedule, schedule_kwargs)
  has_momentum = not checks.is_concrete_value(momentum, 0.0)
  if has_momentum and opt.name != 'sgd' and not checks.is_traced(momentum):
    raise checks.ArgumentError('momentum', f'0 for optimizer {opt.name!r} (momentum applies to sgd; pass the '
                               "optimizer's own arguments in optimizer_kwargs)", momentum)
  return Lazy(lr_scale=lr_scale, momentum=momentum, power_iters=power_iters, optimizer=opt,
              momentum_model=has_momentum, **args)


def lazy_exact(*, init_scale=0.3, parametrization: str = 'cp', signs: str = 'positive', symmetric_init: bool = False,
               ntk_scaling: bool = False) -> LazyExact:
  """The exact lazy optimum: the min-norm least-squares step W* = W0 + J^+ (T* - T(W0)), whose model is
  T(W0) plus the projection of T* - T(W0) onto the tangent space range(J) (the limit of `lazy`).

  Args:
    init_scale: W0 has factors init_scale * Unif(S^{d-1}) and cp coefficients init_scale (a finite number > 0).
    parametrization: cp (c_i u_i^l), power (s_i w_i^l) or homogeneous (s_i ||w_i||^2 (w_i/||w_i||)^l).
    signs: the fixed signs s_i of power and homogeneous: positive or balanced (+1, -1, ...).
    symmetric_init: double the model, T(W+) - T(W-) with W+ = W- = W0, so that T(W0) = 0 (True or False).
    ntk_scaling: scale the model by 1/sqrt(m) (True or False).

  Returns a LazyExact value for overparam.fit (leaf: init_scale). fit returns the dense model as
  `model` (no coeffs/factors) and extras['tangent_rank'], the numerical rank of J (use float64 near the
  threshold: in float32 the rank resolves singular values only down to ~1e-2 sigma_max).
  """
  return LazyExact(**_model_args(init_scale, parametrization, signs, symmetric_init, ntk_scaling))


# ---------------------------------------------------------------------------------------------
# Memory estimates.

def lazy_words_per_run(alg: Lazy, task: Task, dim: int, bucket: int, rank: int) -> int:
  """Parameters and copies, optimizer state, T*, T(W0), T_lin and the residual (d^l each), the
  linearization's residuals and the power iterate."""
  order = task.order
  params = bucket * memory.params_per_component(alg.parametrization, dim)
  opt = optim.as_optimizer(alg.optimizer)
  extra = (('momentum', 0.5), ('nesterov', True)) if (opt.name == 'sgd' and alg.momentum_model) else ()
  opt_words = memory.optimizer_words(opt, params, task.steps, extra)
  samples = (memory.sample_words(task, dim, bucket) + 2 * task.sampling.num_samples) if task.loss == 'samples' else 0
  return 5 * params + opt_words + 6 * dim ** order + (order + 2) * bucket * dim ** (order - 1) + 2 * params + samples


RUNTIME_BYTES = 150 * 2 ** 20  # exact_program_bytes: a 'qr' grid-path program's memory beyond XLA's buffers


def exact_program_bytes(order: int, dim: int, parametrization: str, dtype_bytes: int, widths, runs: int,
                        method: str = 'qr', slots: Optional[int] = 8) -> int:
  """Peak bytes of one grid-path program: `runs` seeds, widths = the grid (P = max(widths) k, G
  widths), with the host copies of its inputs and outputs.

  method 'qr' (LazyExact's default): the seeds run one after another, so the factorization's arrays
  exist once: the phases' peaks are the Jacobian rows and their rotation (2 N P words), the rotation
  and the gathered matrix A (N P + N (P' + G), P' = P + slots), R with the triangle T (n0 x n0,
  n0 = min(N, P)) and E (n0 x L, L = P' - n0), and the solve (T, E, F = T^-1 E, I + F^T F and its
  Cholesky: n0^2 + 2 n0 L + 2 L^2). Per run, on the device: the G widths' dense models and
  right-hand sides and the states' parameters (G (4 d^l + 8 P)); on the host: its state and the
  dense models (G (2 d^l + 4 P)). Plus RUNTIME_BYTES: what a grid-path program holds beyond XLA's
  buffers (its compiled code and compile-time allocations, LAPACK and OpenBLAS workspaces; measured
  105-230 MiB above the base process at d = 12-32 on the floor branch). slots None: one per column.
  Checked against measured peak RSS by benchmarks/memory_bench.py (RESULTS.md sections 6 and 11).

  method 'gs' (the block Gram-Schmidt): per seed (vmapped): J, its forward-mode construction, J with the G right-hand sides, and the
  factorization's output (S = min(N, P) rows): 3 N P + S P words, plus G dense models. Once (the
  factorization and the solves run one seed at a time): the scan's copy of J and its update
  (2 N P), the panels' coefficients and their concatenation (2 P^2), the compacted and masked
  coefficients (2 S P), the Gram matrices (4 S^2). No margin: at l = 3, d = 32, 1 seed this gives
  1.5x XLA's own accounting (2.9 GB temporaries).
  """
  n = sym_dim(dim, order)
  p = max(widths) * memory.params_per_component(parametrization, dim)
  g, s = len(widths), min(n, p)
  if method == 'qr':
    pp = p + (p if slots is None else slots)
    n0 = min(n, p)
    extra, a = pp - n0, n * (pp + g)
    once = max(2 * n * p, n * p + a, a + n0 * n0 + n0 * extra, n0 * n0 + 2 * n0 * extra + 2 * extra * extra)
    per_run = g * (4 * dim ** order + 8 * p) + g * (2 * dim ** order + 4 * p)
    return dtype_bytes * (once + runs * per_run) + RUNTIME_BYTES
  per_seed = 3 * n * p + s * p + 4 * g * dim ** order
  once = 2 * n * p + 2 * p * p + 2 * s * p + 4 * s * s
  return dtype_bytes * (runs * per_seed + once)


def exact_bytes(alg: LazyExact, task: Task, dim: int, bucket: int, rank: int, dtype_bytes: int, runs: int = 1,
                widths=()) -> int:
  """Tensor targets: with the grid `widths` (one program per d) the whole program's bytes, runs = seeds
  per device; without, one width's run (J is N x P: its construction, the Gram matrix, its
  eigenvectors and LAPACK workspace; XLA's peak measured 2.6 N P words per run on CPU (l = 3, d = 24,
  bucket 128, 4 runs vmapped); 5 N P). loss = samples: one run, J_F being num_samples x params."""
  p = bucket * memory.params_per_component(alg.parametrization, dim)
  if task.loss == 'samples':
    n = task.sampling.num_samples
    return dtype_bytes * (5 * n * p + 2 * n * dim + 4 * dim ** task.order)
  if widths:
    return exact_program_bytes(task.order, dim, alg.parametrization, dtype_bytes, widths, runs, alg.method, alg.slots)
  return dtype_bytes * (5 * sym_dim(dim, task.order) * p + 4 * dim ** task.order)


def exact_detail(alg: LazyExact, task: Task, dim: int, bucket: int) -> str:
  p = bucket * memory.params_per_component(alg.parametrization, dim)
  if task.loss == 'samples':
    return f'J_F of {task.sampling.num_samples} x {p} (num_samples x params) per run'
  return f'J of {sym_dim(dim, task.order)} x {p} (C(d+l-1,l) x params) per seed'
