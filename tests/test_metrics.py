"""Recovery metrics against hand-computed cases; the jax version (trajectories) against the host one."""

import jax.numpy as jnp
import numpy as np
import pytest

from overparam import metrics

S2 = np.sqrt(2.0)


def hand_case():
  """Order 3, d = 3, a_1 = e_1 (c* = 2), a_2 = (e_2 + e_3)/sqrt(2) (c* = 1); five learned components."""
  true_c = np.array([2.0, 1.0])
  true_a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]) / np.array([[1.0], [S2]])
  coeffs = np.array([0.25, -0.5, 0.5, 3.0, 1e-3])
  factors = np.array([
      [2.0, 0.0, 0.0],   # weight 0.25 * 2^3 = 2 on a_1, cos 1
      [0.0, 1.0, 1.0],   # weight 0.5 * sqrt(2)^3 on a_2, cos 1 (the sign of the coefficient is ignored)
      [0.1, 1.0, 0.0],   # weight 0.5 * 1.01^1.5; cos 0.1/sqrt(1.01) with a_1, 1/sqrt(2.02) with a_2
      [0.0, 0.0, 0.0],   # a zero component: weight 0, cos 0
      [1.0, 0.1, 0.0],   # weight 1e-3 * 1.01^1.5 on a_1 with cos 1/sqrt(1.01) = 0.995 > 0.99
  ])
  return coeffs, factors, true_c, true_a


def test_recovery_hand_computed():
  coeffs, factors, true_c, true_a = hand_case()
  got = metrics.recovery(coeffs, factors, true_c, true_a, 3)
  np.testing.assert_allclose(got['max_cos'], [1.0, 1.0], rtol=1e-15)
  np.testing.assert_allclose(got['aligned_weight'], [2.0 + 1e-3 * 1.01 ** 1.5, 0.5 * S2 ** 3], rtol=1e-14)
  assert got['recovered_fraction'] == 1.0
  # active: weight > 1e-3 * max|c*| = 2e-3 -> the first three (the fifth has ~1.015e-3)
  assert got['active_components'] == 3
  assert metrics.recovery(coeffs, factors, true_c, true_a, 3, active_tol=5e-4)['active_components'] == 4


def test_recovery_hand_computed_partial():
  coeffs, factors, true_c, true_a = hand_case()
  keep = [0, 2, 3]  # no component on a_2 any more: the best is component 2 with cos 1/sqrt(2.02)
  got = metrics.recovery(coeffs[keep], factors[keep], true_c, true_a, 3)
  np.testing.assert_allclose(got['max_cos'], [1.0, 1.0 / np.sqrt(2.02)], rtol=1e-14)
  np.testing.assert_allclose(got['aligned_weight'], [2.0, 0.0], rtol=1e-15)
  assert got['recovered_fraction'] == 0.5
  assert got['active_components'] == 2
  # order enters the weight: order 4 -> 0.25 * 2^4 = 4
  np.testing.assert_allclose(metrics.recovery(coeffs[keep], factors[keep], true_c, true_a, 4)['aligned_weight'][0],
                             4.0, rtol=1e-15)


def test_recovery_unnormalized_truth_and_no_components():
  coeffs, factors, true_c, true_a = hand_case()
  got = metrics.recovery(coeffs, factors, true_c, 3.0 * true_a, 3)  # directions of a_j only
  np.testing.assert_allclose(got['max_cos'], [1.0, 1.0], rtol=1e-15)
  empty = metrics.recovery(np.zeros(0), np.zeros((0, 3)), true_c, true_a, 3)
  assert empty['max_cos'] == [0.0, 0.0] and empty['recovered_fraction'] == 0.0
  assert empty['aligned_weight'] == [0.0, 0.0] and empty['active_components'] == 0


@pytest.mark.slow
@pytest.mark.parametrize('seed', [0, 1])
def test_alignment_jax_matches_recovery(seed):
  cases = [hand_case()]
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(3, 5))
  v = np.concatenate([a[[0, 0, 2]] + 0.01 * rng.normal(size=(3, 5)), rng.normal(size=(4, 5))])
  cases.append((rng.normal(size=7), v, np.array([1.0, 0.5, 2.0]), a))
  for coeffs, factors, true_c, true_a in cases:
    for order in (3, 4):
      want = metrics.recovery(coeffs, factors, true_c, true_a, order)
      got = metrics.alignment(*(jnp.asarray(x, jnp.float64) for x in (coeffs, factors, true_c, true_a)), order)
      np.testing.assert_allclose(np.asarray(got['max_cos']), want['max_cos'], rtol=1e-13)
      np.testing.assert_allclose(np.asarray(got['aligned_weight']), want['aligned_weight'], rtol=1e-13)
      assert float(got['recovered_fraction']) == want['recovered_fraction']
      assert int(got['active_components']) == want['active_components']


def test_fit_steps_and_order_hand_computed():
  from overparam import analysis
  iteration = np.array([10, 20, 30, 40])
  aligned = np.array([[0.0, 0.0, 0.0],
                      [0.9, 0.0, 0.0],
                      [1.0, 0.0, 0.2],
                      [1.0, 0.1, 0.25]])
  steps = analysis.fit_steps(iteration, aligned, np.array([1.0, 0.5, -0.4]))
  assert steps == [20, None, 30]  # half of |c*|: 0.5 (at 20), 0.25 (never), 0.2 (at 30)
  assert analysis.fit_order(steps) == [0, 2, 1]  # never-fitted last
  assert analysis.fit_steps(iteration, aligned, np.array([1.0, 0.5, 0.4]), frac=0.95) == [30, None, None]


def test_rank_exponents_fit_m_star_against_rank():
  from overparam import analysis
  ths = [{'algorithm': 'beyond_lazy', 'order': 3, 'dim': 50, 'rank': k, 'm_star': 3 * k ** 2} for k in (1, 2, 4)]
  ths += [{'algorithm': 'gd', 'order': 3, 'dim': 50, 'rank': 2, 'm_star': 4, 'alpha': 1.0},
          {'algorithm': 'gd', 'order': 3, 'dim': 50, 'rank': 3, 'm_star': None, 'alpha': 1.0}]
  fits = analysis.rank_exponents(ths)
  assert len(fits) == 1  # gd has one rank with an m*: no fit
  f = fits[0]
  assert f['versus'] == 'rank' and f['algorithm'] == 'beyond_lazy' and f['dim'] == 50
  np.testing.assert_allclose([f['exponent'], f['prefactor']], [2.0, 3.0], rtol=1e-12)
