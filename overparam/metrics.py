"""Recovery and laziness metrics of a learned CP tensor against a factored truth (host, float64)."""

from typing import Dict, Sequence

import jax.numpy as jnp
import numpy as np

RECOVERED_COS = 0.99


def _alignment(xp, coeffs, factors, true_coeffs, true_factors, order: int, active_tol: float):
  """The recovery metrics, written once for an array module xp (numpy on the host, jax.numpy in a
  trace). Component i contributes weight |coeffs_i| ||v_i||^l in direction v_i / ||v_i||."""
  norms = xp.linalg.norm(factors, axis=1)
  unit_v = factors / xp.maximum(norms, xp.finfo(factors.dtype).tiny)[:, None]
  unit_a = true_factors / xp.linalg.norm(true_factors, axis=1, keepdims=True)
  cos = xp.abs(unit_v @ unit_a.T)  # (m, r)
  weight = xp.abs(coeffs) * norms ** order
  max_cos = cos.max(axis=0, initial=0.0)
  good = cos.max(axis=1, initial=0.0) > RECOVERED_COS
  best = cos.argmax(axis=1) if cos.shape[0] else xp.zeros((0,), xp.int32)
  onehot = (best[:, None] == xp.arange(true_factors.shape[0])[None, :]) & good[:, None]
  real = true_coeffs != 0  # a component of weight 0 is not part of T* and is not counted
  return {
      'max_cos': max_cos,
      'aligned_weight': xp.sum(xp.where(onehot, weight[:, None], 0.0), axis=0),
      'recovered_fraction': (xp.sum(((max_cos > RECOVERED_COS) & real).astype(factors.dtype))
                             / xp.maximum(xp.sum(real.astype(factors.dtype)), 1.0)),
      'real_components': xp.sum(real),
      'active_components': xp.sum(weight > active_tol * xp.max(xp.abs(true_coeffs))).astype(xp.int32),
  }


def recovery(coeffs, factors, true_coeffs, true_factors, order: int, active_tol: float = 1e-3) -> Dict:
  """Compares learned components with the true ones, on the host in float64.

  coeffs (m,), factors (m, d): learned T = sum_i coeffs_i factors_i^{(x)l}; true_* likewise (r,), (r, d).
  Returns max_cos[j] = max_i |cos(v_i, a_j)|; aligned_weight[j] = summed weight of the components whose
  best match is a_j with |cos| > 0.99; recovered_fraction = share of the a_j of non-zero weight c*_j
  with max_cos > 0.99 (None if every c*_j is 0); active_components = number of components with weight
  > active_tol * max_j |c*_j|.
  """
  f64 = lambda x: np.asarray(x, np.float64)
  out = _alignment(np, f64(coeffs), f64(factors), f64(true_coeffs), f64(true_factors), order, active_tol)
  return {
      'max_cos': [float(x) for x in out['max_cos']],
      'aligned_weight': [float(x) for x in out['aligned_weight']],
      'recovered_fraction': float(out['recovered_fraction']) if out['real_components'] else None,
      'active_components': int(out['active_components']),
  }


def alignment(coeffs, factors, true_coeffs, true_factors, order: int, active_tol: float = 1e-3) -> Dict:
  """metrics.recovery in jax (traceable, any dtype), for trajectories: the same implementation.

  Returns max_cos (r,), aligned_weight (r,), recovered_fraction and active_components (scalars).
  """
  out = _alignment(jnp, coeffs, factors, true_coeffs, true_factors, order, active_tol)
  del out['real_components']
  return out


def movement(params: Sequence, params0: Sequence, width: int) -> float:
  """||W - W0|| / ||W0|| over the first `width` components of every parameter array (inf or nan for a
  run that diverged: no warning, the row reports null)."""
  with np.errstate(over='ignore', invalid='ignore'):
    sq = lambda x: float(np.sum(np.asarray(x, np.float64)[:width] ** 2))
    num = sum(sq(np.asarray(p, np.float64) - np.asarray(q, np.float64)) for p, q in zip(params, params0))
    den = sum(sq(q) for q in params0)
    return float(np.sqrt(num / den)) if den > 0 else float('nan')
