"""Parametrizations and the loss: dense == implicit (value and gradient), finite differences."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from overparam import objectives, tensors

from tests.support import np_outer_cp


def _problem(order, parametrization, m=4, d=5, r=3, seed=0):
  key = jax.random.PRNGKey(seed)
  params = objectives.init_params(jax.random.fold_in(key, 1), parametrization, m, d, 0.7, jnp.float64)
  # perturb so cp coefficients are not all equal
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.fold_in(key, 2), x.shape, x.dtype),
                        params)
  signs = jnp.array([1.0, -1.0, 1.0, 1.0])[:m]
  target = tensors.make_target(jax.random.fold_in(key, 3), 'random_unit', order, d, r,
                               weights=(1.0, 2.0, 0.5)[:r], dtype=jnp.float64)
  return params, signs, target


@pytest.mark.slow
@pytest.mark.parametrize('order', [2, 3, 4, 5])
@pytest.mark.parametrize('parametrization', objectives.PARAMETRIZATIONS)
def test_dense_and_implicit_agree_value_and_grad(order, parametrization):
  params, signs, target = _problem(order, parametrization)
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  vals = {}
  for loss in objectives.LOSSES:
    f = lambda p, loss=loss: objectives.objective(p, signs, mask, target, order, parametrization, loss, 0.1)[0]
    vals[loss] = jax.value_and_grad(f)(params)
  (vd, gd), (vi, gi) = vals['dense'], vals['implicit']
  np.testing.assert_allclose(float(vd), float(vi), rtol=1e-10)
  chex.assert_trees_all_close(gd, gi, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('parametrization', objectives.PARAMETRIZATIONS)
def test_canonical_reproduces_model_tensor(parametrization):
  """The canonical export rebuilds, with a numpy oracle, the tensor the parametrization defines."""
  order = 3
  params, signs, _ = _problem(order, parametrization)
  c, v = objectives.canonical(params, parametrization, signs)
  w = np.asarray(params['factors'])
  if parametrization == 'cp':
    want = np_outer_cp(np.asarray(params['coeffs']), w, order)
  elif parametrization == 'power':
    want = np_outer_cp(np.asarray(signs), w, order)
  else:  # s_i ||w_i||^2 (w_i / ||w_i||)^{(x)l} == s_i ||w_i||^{2-l} w_i^{(x)l}
    nrm = np.linalg.norm(w, axis=1)
    want = np_outer_cp(np.asarray(signs) * nrm ** (2 - order), w, order)
  np.testing.assert_allclose(np.asarray(tensors.dense_cp(c, v, order)), want, rtol=1e-11, atol=1e-13)


def test_homogeneous_is_two_homogeneous_and_safe_at_zero():
  params, signs, target = _problem(3, 'homogeneous')
  c1, v1 = objectives.canonical(params, 'homogeneous', signs)
  c2, v2 = objectives.canonical(jax.tree.map(lambda x: 3.0 * x, params), 'homogeneous', signs)
  np.testing.assert_allclose(np.asarray(tensors.dense_cp(c2, v2, 3)),
                             9.0 * np.asarray(tensors.dense_cp(c1, v1, 3)), rtol=1e-12)
  zero = {'factors': params['factors'].at[0].set(0.0)}
  g = jax.grad(lambda p: objectives.objective(p, signs, jnp.ones(4), target, 3, 'homogeneous', 'implicit', 0.1)[0])(zero)
  assert np.all(np.isfinite(np.asarray(g['factors'])))
  np.testing.assert_allclose(np.asarray(g['factors'][0]), 0.0, atol=1e-300)


@pytest.mark.parametrize('parametrization', objectives.PARAMETRIZATIONS)
@pytest.mark.parametrize('loss', objectives.LOSSES)
def test_gradient_matches_central_differences(parametrization, loss):
  order = 3
  params, signs, target = _problem(order, parametrization, seed=4)
  mask = jnp.ones(4)
  obj = lambda p: objectives.objective(p, signs, mask, target, order, parametrization, loss, 0.05)[0]
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  f = lambda x: float(obj(unravel(jnp.asarray(x))))
  g = np.asarray(jax.flatten_util.ravel_pytree(jax.grad(obj)(params))[0])
  x0, h = np.asarray(flat), 1e-6
  fd = np.array([(f(x0 + h * e) - f(x0 - h * e)) / (2 * h) for e in np.eye(x0.size)])
  np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_mask_drops_components_exactly():
  params, signs, target = _problem(3, 'cp')
  mask = jnp.array([1.0, 1.0, 0.0, 0.0])
  full = objectives.objective(params, signs, mask, target, 3, 'cp', 'implicit', 0.2)[0]
  head = jax.tree.map(lambda x: x[:2], params)
  np.testing.assert_allclose(
      float(full), float(objectives.objective(head, signs[:2], jnp.ones(2), target, 3, 'cp', 'implicit', 0.2)[0]),
      rtol=1e-13)


def test_init_prefix_property():
  key = jax.random.PRNGKey(7)
  small = objectives.init_params(key, 'cp', 3, 6, 0.5, jnp.float64)
  wide = objectives.init_params(key, 'cp', 8, 6, 0.5, jnp.float64)
  chex.assert_trees_all_close(small, jax.tree.map(lambda x: x[:3], wide), rtol=1e-15, atol=1e-16)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(wide['factors']), axis=1), 0.5, rtol=1e-12)


@pytest.mark.parametrize('order', [3, 4])
def test_rel_error_f64_dense_and_implicit_paths_agree(order):
  params, signs, target = _problem(order, 'cp')
  c, v = objectives.canonical(params, 'cp', signs)
  dense = objectives.rel_error_f64(c, v, target, order)
  implicit = objectives.rel_error_f64(c, v, target, order, dense_limit=0)
  want = np.linalg.norm(np_outer_cp(np.asarray(c), np.asarray(v), order)
                        - np_outer_cp(np.asarray(target.coeffs), np.asarray(target.factors), order))
  want /= np.linalg.norm(np_outer_cp(np.asarray(target.coeffs), np.asarray(target.factors), order))
  np.testing.assert_allclose(dense, want, rtol=1e-12)
  np.testing.assert_allclose(implicit, want, rtol=1e-9)
  # the jittable objectives.rel_error: the dense residual (small d^l, or a dense T*) and the Gram form
  jit_rel = jax.jit(objectives.rel_error, static_argnums=(3, 4))
  np.testing.assert_allclose(float(jit_rel(c, v, target, order, 1 << 22)), want, rtol=1e-12)
  np.testing.assert_allclose(float(jit_rel(c, v, target, order, 0)), want, rtol=1e-9)
  dense_t = tensors.Target(dense=tensors.dense_cp(target.coeffs, target.factors, order))
  np.testing.assert_allclose(float(jit_rel(c, v, dense_t, order, 0)), want, rtol=1e-12)


def test_implicit_loss_refuses_dense_target():
  params, signs, target = _problem(3, 'cp')
  dense_target = tensors.Target(dense=tensors.dense_cp(target.coeffs, target.factors, 3))
  with pytest.raises(ValueError, match='factored'):
    objectives.objective(params, signs, jnp.ones(4), dense_target, 3, 'cp', 'implicit', 0.0)


def test_init_params_dim_mask_pads_the_unpadded_init():
  """init_params at a padded d with dim_mask: the first d coordinates are the unpadded init (to the
  rounding of the norm), the rest exactly 0."""
  key = jax.random.PRNGKey(4)
  small = objectives.init_params(key, 'cp', 6, 5, 0.3, jnp.float64)
  big = objectives.init_params(key, 'cp', 6, 9, 0.3, jnp.float64, dim_mask=(jnp.arange(9) < 5).astype(jnp.float64))
  np.testing.assert_allclose(np.asarray(big['factors'])[:, :5], np.asarray(small['factors']), rtol=1e-15, atol=1e-16)
  np.testing.assert_array_equal(np.asarray(big['factors'])[:, 5:], 0.0)
  np.testing.assert_array_equal(np.asarray(big['coeffs']), np.asarray(small['coeffs']))
