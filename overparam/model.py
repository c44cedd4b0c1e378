"""The model and its loss as public pure functions, for writing your own training loop.

    params = overparam.init_params(key, width=6, dim=8, scale=0.1)           # cp: {'coeffs', 'factors'}
    value, grads = jax.value_and_grad(overparam.loss)(params, t)            # 1/2 ||T(W) - T*||^2
    coeffs, factors = overparam.cp_form(params)
    overparam.rel_error(coeffs, factors, t)

Every function is jittable and differentiable (the loss and rel_error in their arguments); `target`
is a dense symmetric (d,)*l array (dense loss, O(m d^l)) or a tensors.CPTensor (the implicit loss,
O(m^2 d + m r d); T* is never formed densely). Shapes are checked with chex where they enter.
"""

from typing import Optional

import chex
import jax
import jax.numpy as jnp

from overparam import checks, objectives, tensors
from overparam.errors import ArgumentError


def _target(target) -> tuple:
  """(tensors.Target, order) of a dense array or a CPTensor (no value checks: may be traced)."""
  if isinstance(target, tensors.CPTensor):
    return tensors.Target(coeffs=target.coeffs, factors=target.factors), target.order
  if isinstance(target, tensors.Target):
    raise ArgumentError('target', 'a dense array or a CPTensor', 'a tensors.Target')
  t = jnp.asarray(target)
  if t.ndim < 2 or len(set(t.shape)) != 1:
    raise ArgumentError('target', 'a symmetric array of shape (d,)*l with l >= 2', f'shape {t.shape}')
  return tensors.Target(dense=t), t.ndim


def init_params(key, width: int, dim: int, *, parametrization: str = 'cp', scale=0.3, dtype=jnp.float32):
  """A random init of `width` components in R^`dim`: factors scale * Unif(S^{d-1}), component i drawn
  from fold_in(key, i) alone (a width-m init is the first m rows of any wider one); cp also has
  coeffs = scale. Returns {'coeffs' (m,), 'factors' (m, d)} (cp) or {'factors' (m, d)}."""
  checks.integer('width', width, 1)
  checks.integer('dim', dim, 1)
  checks.choice('parametrization', parametrization, objectives.PARAMETRIZATIONS)
  checks.number('scale', scale, 0.0, True)
  return objectives.init_params(key, parametrization, width, dim, scale, dtype)


def cp_form(params, parametrization: str = 'cp', signs: Optional[jax.Array] = None):
  """(coeffs (m,), factors (m, d)) with T(W) = sum_i coeffs_i factors_i^{(x)l}: cp (c, u) -> (c, u);
  power w -> (s, w); homogeneous w -> (s ||w||^2, w / ||w||). signs (m,): the fixed s_i (default +1)."""
  checks.choice('parametrization', parametrization, objectives.PARAMETRIZATIONS)
  w = params['factors']
  chex.assert_rank(w, 2)
  if signs is None:
    signs = jnp.ones(w.shape[:1], w.dtype)
  return objectives.canonical(params, parametrization, signs)


def dense(coeffs, factors, order: int) -> jax.Array:
  """sum_i coeffs_i factors_i^{(x)order}: coeffs (m,), factors (m, d) -> (d,)*order (one GEMM)."""
  checks.integer('order', order, 2)
  return tensors.dense_cp(coeffs, factors, order)


def loss(params, target, *, parametrization: str = 'cp', signs: Optional[jax.Array] = None, reg=0.0) -> jax.Array:
  """1/2 ||T(W) - T*||_F^2 + reg/2 ||W||_F^2 (scalar). target: a dense (d,)*l array (the dense loss)
  or a CPTensor (the implicit loss)."""
  t, order = _target(target)
  coeffs, factors = cp_form(params, parametrization, signs)
  kind = 'dense' if t.dense is not None else 'implicit'
  mask = jnp.ones(coeffs.shape, coeffs.dtype)
  return objectives.objective(params, jnp.ones_like(coeffs) if signs is None else signs, mask, t, order,
                              parametrization, kind, reg)[0]


def rel_error(coeffs, factors, target) -> jax.Array:
  """||T(coeffs, factors) - T*||_F / ||T*||_F in the inputs' dtype (objectives.rel_error: dense residual
  when T* is dense or d^l is small, else the implicit Gram form)."""
  t, order = _target(target)
  return objectives.rel_error(coeffs, factors, t, order)

