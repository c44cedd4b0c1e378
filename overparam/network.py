"""The network view of a symmetric CP tensor: Hermite features, samples and the empirical loss.

h_l = He_l / sqrt(l!) is the normalized probabilists' Hermite polynomial and H_l(x) the normalized
order-l Hermite tensor; for x ~ N(0, I_d) and symmetric T, S: E_x[<T, H_l(x)> <S, H_l(x)>] = <T, S>.
For T = sum_i c_i w_i^{(x)l} (any parametrization, through objectives.canonical):

  f_T(x) = <T, H_l(x)> = sum_i c_i ||w_i||^l h_l(w_i . x / ||w_i||),

a two-layer network with activation h_l, one neuron per component, output weights c_i. Its
population square loss is E_x (f_T(x) - f_{T*}(x))^2 = ||T - T*||_F^2, so the empirical loss

  L_n(T) = 1/(2n) sum_k (f_T(x_k) - y_k)^2,      y_k = f_{T*}(x_k) (+ label noise),

is an unbiased estimate of objectives.data_loss = 1/2 ||T - T*||_F^2 (same normalization), computed in
O(n m d) (never a d^l array).

A neuron is evaluated without dividing by ||w||: with s = w . x and q = ||w||^2,
p_k(s, q) = ||w||^k He_k(s / ||w||) obeys the three-term recurrence p_{k+1} = s p_k - k q p_{k-1}
(p_0 = 1, p_1 = s), a polynomial in w that is smooth at w = 0 and, unlike the expanded monomial sum,
free of cancellation between large terms for large |s|.

Samples. Sample k of batch b of a run is x = N(0, I_d) from fold_in(fold_in(fold_in(key, b), 0), k)
and its label noise xi ~ N(0, 1) from fold_in(fold_in(fold_in(key, b), 1), k), key = sample_key(seed):
batch 0 is the fixed training set (its first n points are the same for every n: training sets are
nested in n), batch t + 1 the fresh batch of step t of an online (one-pass SGD) run. The label is
y = f_{T*}(x) + label_noise ||T*||_F xi: label_noise is relative to the label's standard deviation.
"""

import dataclasses
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


class Samples(NamedTuple):
  """A batch of labelled points: x (n, d), y (n,)."""
  x: jax.Array
  y: jax.Array


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  """Static description of the data of loss=samples (hashable).

  num_samples: n, the training-set size (fixed) or the batch size of every step (online).
  online: fresh samples every step (one-pass SGD) instead of one fixed training set.
  label_noise: standard deviation of the Gaussian label noise, in units of ||T*||_F.
  """
  num_samples: int
  online: bool = False
  label_noise: float = 0.0


def sample_key(seed: int):
  """The samples key of one seed: fold_in(PRNGKey(seed), 3) (targets.seed_keys uses 0, 1, 2)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 3)


# ----------------------------------------------------------------------------------------------
# Hermite polynomials and the network.

def hermite_he(order: int, z: jax.Array) -> jax.Array:
  """He_order(z), probabilists' Hermite polynomial, elementwise, by the three-term recurrence."""
  return scaled_hermite(order, z, jnp.ones_like(z))


def scaled_hermite(order: int, s: jax.Array, q: jax.Array) -> jax.Array:
  """p_order(s, q) = q^{order/2} He_order(s / sqrt(q)), by p_{k+1} = s p_k - k q p_{k-1} (broadcasts)."""
  prev, cur = jnp.ones_like(s), s
  if order == 0:
    return prev
  for k in range(1, order):
    prev, cur = cur, s * cur - k * q * prev
  return cur


def neurons(factors: jax.Array, x: jax.Array, order: int) -> jax.Array:
  """Neuron outputs ||w_i||^l h_l(w_i . x_k / ||w_i||): factors (m, d), x (n, d) -> (n, m).

  Equals <w_i^{(x)l}, H_l(x_k)>; O(n m d) for the products x_k . w_i.
  """
  chex.assert_rank([factors, x], 2)
  s = x @ factors.T
  q = jnp.sum(factors * factors, axis=1)
  return scaled_hermite(order, s, q[None, :]) / math.sqrt(math.factorial(order))


def outputs(coeffs: jax.Array, factors: jax.Array, x: jax.Array, order: int) -> jax.Array:
  """f_T(x_k) = <T, H_l(x_k)> for T = sum_i coeffs_i factors_i^{(x)l}: (n,)."""
  chex.assert_rank(coeffs, 1)
  return neurons(factors, x, order) @ coeffs


def sample_loss(coeffs: jax.Array, factors: jax.Array, samples: Samples, order: int) -> jax.Array:
  """The empirical loss 1/(2n) sum_k (f_T(x_k) - y_k)^2, an estimate of 1/2 ||T - T*||_F^2."""
  r = outputs(coeffs, factors, samples.x, order) - samples.y
  return 0.5 * jnp.mean(r * r)


def relative_sample_error(coeffs, factors, samples: Samples, order: int, target_sq) -> jax.Array:
  """sqrt(2 L_n(T) / ||T*||^2): the training error in rel_error's units (an estimate of it)."""
  return jnp.sqrt(2.0 * sample_loss(coeffs, factors, samples, order) / target_sq)


# ----------------------------------------------------------------------------------------------
# Drawing samples (host or device: the same function, the same numbers).

def draw(key, batch, num: int, dim: int, target_coeffs, target_factors, order: int, label_noise: float,
         target_norm, dtype=jnp.float32) -> Samples:
  """Batch `batch` (0: the fixed training set; t + 1: online step t) of `num` labelled samples.

  The target must be factored (coeffs (r,), factors (r, d)); see the module docstring for the keys.
  """
  bk = jax.random.fold_in(key, batch)
  kx, kn = jax.random.fold_in(bk, 0), jax.random.fold_in(bk, 1)
  ids = jnp.arange(num)
  x = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(kx, i), (dim,), dtype))(ids)
  y = outputs(target_coeffs.astype(dtype), target_factors.astype(dtype), x, order)
  if label_noise:
    xi = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(kn, i), (), dtype))(ids)
    y = y + jnp.asarray(label_noise * target_norm, dtype) * xi
  return Samples(x=x, y=y)


def step_samples(data, step, sampling: SampleSpec, order: int, dim: int, dtype) -> Samples:
  """The samples the update at `step` uses: the run's fixed set (data.samples), or online the fresh
  batch step + 1 drawn on device from data.sample_key. data: a core.RunData of one run."""
  if not sampling.online:
    return data.samples
  t = data.target
  return draw(data.sample_key, step + 1, sampling.num_samples, dim, t.coeffs, t.factors, order,
              sampling.label_noise, jnp.sqrt(data.target_sq), dtype)


def scale_labels(samples: Samples, factor) -> Samples:
  """Labels times `factor` (beyond_lazy trains on T* / ||T*||: its labels are divided the same way)."""
  return samples._replace(y=samples.y * factor)
