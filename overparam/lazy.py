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
                       sqrt(multiplicity), an isometry on symmetric tensors) and solved by the
                       eigendecomposition of its Gram matrix (min_norm_solve). Reports the
                       numerical rank of J (`tangent_rank`, see min_norm_solve) and the
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
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from overparam import algorithms, config_lib, memory, objectives, optim, registry, tensors
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
  """Peak bytes of one lazy_exact run, with a 2x margin.

  J is N x P (N = C(d+l-1, l), P = bucket * params per component); with its forward-mode
  construction, the Gram matrix (min(N, P)^2 <= N P), its eigenvectors and LAPACK workspace, XLA's
  peak measured 2.6 N P words per run on CPU (l = 3, d = 24, bucket 128, 4 runs vmapped); 5 N P.
  """
  n = sym_dim(dim, order)
  p = bucket * params_per_component(parametrization, dim)
  return dtype_bytes * (5 * n * p + 4 * dim ** order)


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
  lam, vec = jnp.linalg.eigh(gram)
  keep = lam > lam[-1] * jnp.maximum(jnp.asarray(n, jac.dtype), n_params) * eps
  inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
  if n <= p:  # J^+ b = J^T U diag(1/lam) U^T b
    delta = jac.T @ (vec @ (inv * (vec.T @ b)))
  else:  # J^+ b = V diag(1/lam) V^T J^T b
    delta = vec @ (inv * (vec.T @ (jac.T @ b)))
  return jnp.sum(keep).astype(jnp.int32), delta


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
    gap = self.model(state.params, data) - self.dense_model(state, data)
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


@dataclasses.dataclass(frozen=True)
class LazyExact(_Linearized):
  """The exact lazy optimum by least squares on J in the unique-entry basis; solved in `init`, `step` is a no-op."""

  def unique_jacobian(self, params, data: algorithms.RunData) -> jax.Array:
    """J of the undoubled model at `params` in weighted unique coordinates: (N, P), P = B x params per
    component, columns in jax.flatten_util.ravel_pytree order.

    The model is separable over components (canonical is row-wise), so J is built per component by
    forward mode on the monomials sqrt(mult_e) c_i prod_q v_i[e_q]: O(N P l), never a (d^l, P) array.
    """
    order = self.spec.order
    idx, mult, _ = sym_basis(self.dim, order)
    idx = jnp.asarray(idx)
    w = jnp.sqrt(jnp.asarray(mult, self.dtype))
    scale = self._scale(data)

    def component(p_i, s_i, m_i):
      c, v = objectives.canonical(jax.tree.map(lambda x: x[None], p_i), self.spec.parametrization, s_i[None])
      return scale * m_i * c[0] * w * jnp.prod(v[0][idx], axis=1)

    jac = jax.vmap(jax.jacfwd(component))(params, data.signs, data.mask)
    n = idx.shape[0]
    return jnp.concatenate([jnp.moveaxis(x, 1, 0).reshape(n, -1) for x in jax.tree.leaves(jac)], axis=1)

  def init(self, data: algorithms.RunData) -> algorithms.RunState:
    order = self.spec.order
    p0 = self.init_params(data)
    t0 = self.model(p0, data)
    base = p0['plus'] if self.symmetric_init else p0
    jac = self.unique_jacobian(base, data)
    b = to_unique(dense_target(data.target, order) - t0, order)
    rank, delta_flat = min_norm_solve(jac, b, data.width.astype(self.dtype) * params_per_component(
        self.spec.parametrization, self.dim))
    _, unravel = jax.flatten_util.ravel_pytree(base)
    delta = unravel(delta_flat)
    if self.symmetric_init:  # min-norm over (W+, W-) with J = [J0, -J0]: split the step in halves
      params = {'minus': jax.tree.map(lambda a, b: a - 0.5 * b, p0['minus'], delta),
                'plus': jax.tree.map(lambda a, b: a + 0.5 * b, p0['plus'], delta)}
    else:
      params = jax.tree.map(jnp.add, p0, delta)
    model = self.t_lin(params, p0, t0, data)
    return self._state(params, p0, t0, data, self._rel(model, data), {'tangent_rank': rank})

  def step(self, state: algorithms.RunState, data: algorithms.RunData) -> algorithms.RunState:
    return state

  def extras(self, state, data):
    return {**super().extras(state, data), 'tangent_rank': state.aux['tangent_rank']}


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
  return dict(spec=spec, dim=dim, bucket=bucket, eps=c.eps, init_scale=c.init_scale,
              symmetric_init=c.lazy.symmetric_init, ntk_scaling=c.lazy.ntk_scaling, dtype=config_lib.dtype_of(c))


def build_lazy(c, dim: int, bucket: int) -> Lazy:
  return Lazy(steps=c.steps, lr_scale=c.lazy.lr_scale, momentum=c.lazy.momentum, power_iters=c.lazy.power_iters,
              optimizer=optim.from_config(c), **_kwargs(c, dim, bucket))


def build_lazy_exact(c, dim: int, bucket: int) -> LazyExact:
  return LazyExact(steps=1, **_kwargs(c, dim, bucket))


def lazy_words_per_run(c, dim: int, bucket: int, rank: int) -> int:
  """Parameters and copies, optimizer state, T*, T(W0), T_lin and the residual (d^l each), the
  linearization's residuals and the power iterate."""
  order = c.order
  params = bucket * memory.params_per_component(c.parametrization, dim)
  opt = optim.from_config(c)
  extra = dict(momentum=c.lazy.momentum, nesterov=True) if (opt.name == 'sgd' and c.lazy.momentum) else {}
  opt_words = memory.optimizer_words(dataclasses.replace(opt, kwargs=opt.kwargs + tuple(sorted(extra.items()))),
                                     params, c.steps)
  return (5 * params + opt_words + 6 * dim ** order + (order + 2) * bucket * dim ** (order - 1) + 2 * params)


def exact_bytes(c, dim: int, bucket: int, rank: int) -> int:
  return exact_bytes_per_run(c.order, dim, bucket, c.parametrization, 8 if c.x64 else 4)


def exact_detail(c, dim: int, bucket: int) -> str:
  return (f'J of {sym_dim(dim, c.order)} x {bucket * params_per_component(c.parametrization, dim)} '
          '(C(d+l-1,l) x params) per run')


LAZY_SPEC = registry.AlgorithmSpec(
    name='lazy', build=build_lazy, defaults=DEFAULTS, validate=validate, words_per_run=lazy_words_per_run,
    reads=_MODEL_FIELDS + optim.FIELDS, row_fields=('linearization_gap', 'sym_dim', 'step_size', 'lambda_max'),
    lazy=True)
LAZY_EXACT_SPEC = registry.AlgorithmSpec(
    name='lazy_exact', build=build_lazy_exact, bytes_per_run=exact_bytes, memory_detail=exact_detail,
    reads=_MODEL_FIELDS, row_fields=('linearization_gap', 'sym_dim', 'tangent_rank'), lazy=True)
