"""Parametrizations of a width-m model and its loss, dense and implicit.

Every parametrization maps its parameters W to the canonical form (coeffs (m,), factors (m, d))
with T(W) = sum_i coeffs_i factors_i^{(x)l}:

  cp           W = {coeffs c (m,), factors u (m, d)}   -> (c, u)
  power        W = {factors w (m, d)}, fixed signs s    -> (s, w)
  homogeneous  W = {factors w (m, d)}, fixed signs s    -> (s ||w||^2, w / ||w||)

Loss: L(W) = 1/2 ||T(W) - T*||_F^2 + reg/2 ||W||_F^2, with a component mask so padded
components contribute nothing (neither to T nor to the regularizer). With loss = 'samples' the data
term is the network's empirical loss 1/(2n) sum_k (f_T(x_k) - y_k)^2, whose expectation is the same
1/2 ||T - T*||_F^2 (overparam/network.py).
"""

from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from overparam import network, tensors

PARAMETRIZATIONS = ('cp', 'power', 'homogeneous')
LOSSES = ('dense', 'implicit')  # the tensor losses
ALL_LOSSES = LOSSES + ('samples',)  # and the network's empirical loss (network.py)


def component_normals(key, ids, dim: int, dtype=jnp.float32):
  """(len(ids), dim): row j is jax.random.normal(fold_in(key, ids[j]), (dim,), dtype); the draws of
  init_params and of beyond_lazy's re-initializations.

  Plain jax.random under vmap on purpose: a hand-flattened threefry draw compiled faster but its last
  bits depended on how many runs were batched together, and results must not depend on batching.
  """
  ids = jnp.asarray(ids)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (dim,), dtype))(ids)


def init_params(key, parametrization: str, width: int, dim: int, scale: float, dtype=jnp.float32,
                dim_mask=None):
  """Random init of `width` components; component i is drawn from fold_in(key, i) alone.

  Factors are `scale` times a uniform direction on S^{d-1}; cp coefficients start at `scale`.
  A width-m init is therefore the first m rows of any wider init with the same key. dim_mask
  (dim,): the init of a d-dimensional problem padded to `dim` coordinates (1 on the first d):
  jax's (partitionable) threefry draws the same first d normals for shapes (d,) and (dim,), so the
  real coordinates are those of the unpadded init (to the rounding of the norm), the rest 0.
  """
  g = component_normals(key, jnp.arange(width), dim, dtype)  # row i: normal(fold_in(key, i), (dim,))
  if dim_mask is not None:
    g = g * dim_mask
  factors = scale * g / jnp.linalg.norm(g, axis=-1, keepdims=True)
  if parametrization == 'cp':
    return {'coeffs': jnp.full((width,), scale, dtype), 'factors': factors}
  return {'factors': factors}


def canonical(params, parametrization: str, signs: jax.Array):
  """Maps W to (coeffs (m,), factors (m, d)). `signs` (m,) is used by power and homogeneous."""
  w = params['factors']
  if parametrization == 'cp':
    return params['coeffs'], w
  if parametrization == 'power':
    return signs.astype(w.dtype), w
  if parametrization == 'homogeneous':
    sq = jnp.sum(w * w, axis=-1)
    # Double where: a zero component gets direction 0 (its coefficient sq is 0 anyway) and a
    # finite gradient; a single where or max() would let 0 * inf = nan into the backward pass.
    ok = sq > jnp.sqrt(jnp.finfo(w.dtype).tiny)
    inv = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)
    return signs.astype(w.dtype) * sq, w * inv[:, None]
  raise ValueError(f'unknown parametrization {parametrization!r}')


def data_loss(coeffs, factors, target: tensors.Target, order: int, loss: str,
              samples: Optional[network.Samples] = None) -> jax.Array:
  """1/2 ||T(coeffs, factors) - T*||_F^2, dense (O(m d^l)) or implicit (O(m^2 d + m r d)); for
  loss = 'samples' its estimate on `samples`, network.sample_loss (O(n m d)).

  The dense form requires a symmetric T* (every target this package builds or loads is).
  """
  chex.assert_rank([coeffs, factors], [1, 2])
  if loss == 'samples':
    if samples is None:
      raise ValueError('loss=samples needs the samples')
    return network.sample_loss(coeffs, factors, samples, order)
  if loss == 'implicit':
    if not target.factored:
      raise ValueError('the implicit loss needs a factored target (no file, no noise); use loss=dense')
    a, cs = target.factors, target.coeffs
    sq = (tensors.cp_self_inner(coeffs, factors, order)
          - 2.0 * tensors.cp_inner(coeffs, factors, cs, a, order)
          + tensors.cp_self_inner(cs, a, order))
    return 0.5 * sq
  t_star = target.dense if target.dense is not None else tensors.dense_cp(target.coeffs, target.factors, order)
  return tensors.cp_residual_sq(coeffs, factors, t_star, order)


def regularizer(params, mask: jax.Array) -> jax.Array:
  """1/2 sum_i mask_i ||W_i||^2 over every parameter array (leading axis = component)."""
  per_comp = sum(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1) for x in jax.tree.leaves(params))
  return 0.5 * jnp.sum(mask * per_comp)


def objective(params, signs, mask, target: tensors.Target, order: int, parametrization: str, loss: str, reg,
              samples=None):
  """Returns (L(W), data loss): L(W) = data loss + reg/2 ||W||^2 over the real components.

  mask (m,) in {0, 1} switches components off (padding). reg may be traced (a number or a 0-d array).
  samples: the batch of loss = 'samples' (network.Samples), else None."""
  coeffs, factors = canonical(params, parametrization, signs)
  dl = data_loss(coeffs * mask, factors, target, order, loss, samples)
  return dl + reg * regularizer(params, mask), dl


def dense_target(target: tensors.Target, order: int) -> jax.Array:
  """T* as a dense (d,)*l array (its `dense` part when it has one)."""
  if target.dense is not None:
    return target.dense
  return tensors.dense_cp(target.coeffs, target.factors, order)


def rel_error(coeffs, factors, target: tensors.Target, order: int, dense_limit: int = 1 << 22) -> jax.Array:
  """||T(coeffs, factors) - T*||_F / ||T*||_F in the inputs' dtype, jittable and differentiable.

  coeffs (m,), factors (m, d); target a tensors.Target. Uses the dense residual (accurate to the
  dtype's rounding) when T* is dense or d^l <= dense_limit, else the implicit Gram form
  ||T||^2 - 2 <T, T*> + ||T*||^2, whose cancellation floor is ~sqrt(machine eps) (~3e-4 in float32,
  ~1e-8 in float64) relative to ||T*||.
  """
  chex.assert_rank([coeffs, factors], [1, 2])
  d = factors.shape[1]
  if target.dense is not None or d ** order <= dense_limit:
    t_star = dense_target(target, order).astype(factors.dtype)
    r = tensors.dense_cp(coeffs, factors, order) - t_star
    return jnp.sqrt(jnp.sum(r * r) / jnp.sum(t_star * t_star))
  cs, a = target.coeffs.astype(factors.dtype), target.factors.astype(factors.dtype)
  star = tensors.cp_self_inner(cs, a, order)
  sq = tensors.cp_self_inner(coeffs, factors, order) - 2.0 * tensors.cp_inner(coeffs, factors, cs, a, order) + star
  return jnp.sqrt(jnp.maximum(sq, 0.0) / star)


def rel_error_f64(coeffs, factors, target: tensors.Target, order: int, dense_limit: int = 1 << 24) -> float:
  """||T - T*|| / ||T*|| evaluated on the host in float64 (numpy), for reported numbers.

  Uses the dense residual when d^l <= dense_limit or the target is dense; otherwise the implicit
  Gram form, whose float64 cancellation floor is about 1e-7 relative.
  """
  c = np.asarray(coeffs, np.float64)
  v = np.asarray(factors, np.float64)
  d = v.shape[1]
  if target.dense is not None or d ** order <= dense_limit:
    if target.dense is not None:
      t_star = np.asarray(target.dense, np.float64)
    else:
      t_star = np_dense(np.asarray(target.coeffs, np.float64), np.asarray(target.factors, np.float64), order)
    t = np_dense(c, v, order)
    return float(np.linalg.norm(t - t_star) / np.linalg.norm(t_star))
  cs = np.asarray(target.coeffs, np.float64)
  a = np.asarray(target.factors, np.float64)
  star = cs @ (a @ a.T) ** order @ cs
  sq = c @ (v @ v.T) ** order @ c - 2.0 * c @ (v @ a.T) ** order @ cs + star
  return float(np.sqrt(max(sq, 0.0) / star))


def np_dense(c, v, order):
  m, d = v.shape
  kr = v
  for _ in range(order - 2):
    kr = (kr[:, :, None] * v[:, None, :]).reshape(m, -1)
  return ((c[:, None] * v).T @ kr).reshape((d,) * order)
