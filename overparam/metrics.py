"""Recovery and laziness metrics of a learned CP tensor against a factored truth (host, float64)."""

from typing import Dict, Sequence

import jax.numpy as jnp
import numpy as np

RECOVERED_COS = 0.99


def recovery(coeffs, factors, true_coeffs, true_factors, order: int, active_tol: float = 1e-3) -> Dict:
  """Compares learned components with the true ones.

  coeffs (m,), factors (m, d): learned T = sum_i coeffs_i factors_i^{(x)l}; true_* likewise (r,), (r, d).
  Component i contributes weight |coeffs_i| ||v_i||^l in direction v_i / ||v_i||. Returns
  max_cos[j] = max_i |cos(v_i, a_j)|; aligned_weight[j] = summed weight of the components whose
  best match is a_j with |cos| > 0.99; recovered_fraction = share of the a_j of non-zero weight c*_j
  with max_cos > 0.99 (a component of weight 0 is not part of T* and is not counted);
  active_components = number of components with weight > active_tol * max_j |c*_j|.
  """
  c = np.asarray(coeffs, np.float64)
  v = np.asarray(factors, np.float64)
  a = np.asarray(true_factors, np.float64)
  cs = np.asarray(true_coeffs, np.float64)
  norms = np.linalg.norm(v, axis=1)
  unit_v = v / np.maximum(norms, np.finfo(np.float64).tiny)[:, None]
  cos = np.abs(unit_v @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T)  # (m, r)
  weight = np.abs(c) * norms ** order
  max_cos = cos.max(axis=0) if cos.shape[0] else np.zeros(a.shape[0])
  best, good = cos.argmax(axis=1), cos.max(axis=1) > RECOVERED_COS
  aligned = [float(weight[(best == j) & good].sum()) for j in range(a.shape[0])]
  return {
      'max_cos': [float(x) for x in max_cos],
      'aligned_weight': aligned,
      'recovered_fraction': float(np.mean((max_cos > RECOVERED_COS)[cs != 0])) if np.any(cs != 0) else None,
      'active_components': int(np.sum(weight > active_tol * np.max(np.abs(cs)))),
  }


def alignment(coeffs, factors, true_coeffs, true_factors, order: int, active_tol: float = 1e-3) -> Dict:
  """metrics.recovery in jax (traceable, any dtype), for trajectories: same definitions.

  Returns max_cos (r,), aligned_weight (r,), recovered_fraction and active_components (scalars).
  """
  norms = jnp.linalg.norm(factors, axis=1)
  tiny = jnp.finfo(factors.dtype).tiny
  unit_v = factors / jnp.maximum(norms, tiny)[:, None]
  unit_a = true_factors / jnp.linalg.norm(true_factors, axis=1, keepdims=True)
  cos = jnp.abs(unit_v @ unit_a.T)  # (m, r)
  weight = jnp.abs(coeffs) * norms ** order
  max_cos = cos.max(axis=0)
  best = cos.argmax(axis=1)
  good = cos.max(axis=1) > RECOVERED_COS
  onehot = (best[:, None] == jnp.arange(true_factors.shape[0])[None, :]) & good[:, None]
  return {
      'max_cos': max_cos,
      'aligned_weight': jnp.sum(jnp.where(onehot, weight[:, None], 0.0), axis=0),
      'recovered_fraction': (jnp.sum(((max_cos > RECOVERED_COS) & (true_coeffs != 0)).astype(factors.dtype))
                             / jnp.maximum(jnp.sum((true_coeffs != 0).astype(factors.dtype)), 1.0)),
      'active_components': jnp.sum(weight > active_tol * jnp.max(jnp.abs(true_coeffs))).astype(jnp.int32),
  }


def movement(params: Sequence, params0: Sequence, width: int) -> float:
  """||W - W0|| / ||W0|| over the first `width` components of every parameter array."""
  sq = lambda x: float(np.sum(np.asarray(x, np.float64)[:width] ** 2))
  num = sum(sq(np.asarray(p, np.float64) - np.asarray(q, np.float64)) for p, q in zip(params, params0))
  den = sum(sq(q) for q in params0)
  return float(np.sqrt(num / den)) if den > 0 else float('nan')
