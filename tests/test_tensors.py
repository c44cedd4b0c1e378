"""Symmetric CP tensors, implicit inner products and target generators against numpy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam import tensors
from tests.support import np_outer_cp


@pytest.mark.parametrize('order', [2, 3, 4, 5])
def test_dense_cp_matches_outer_product_loop(order):
  rng = np.random.default_rng(order)
  m, d = 4, 5
  c, v = rng.normal(size=m), rng.normal(size=(m, d))
  got = np.asarray(tensors.dense_cp(jnp.asarray(c), jnp.asarray(v), order))
  np.testing.assert_allclose(got, np_outer_cp(c, v, order), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('order', [2, 3, 4])
def test_cp_inner_matches_dense_inner(order):
  rng = np.random.default_rng(10 + order)
  c1, v1 = rng.normal(size=3), rng.normal(size=(3, 4))
  c2, v2 = rng.normal(size=5), rng.normal(size=(5, 4))
  want = np.sum(np_outer_cp(c1, v1, order) * np_outer_cp(c2, v2, order))
  got = float(tensors.cp_inner(*map(jnp.asarray, (c1, v1, c2, v2)), order))
  np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize('order', [2, 3, 4])
def test_cp_self_inner_custom_jvp_matches_autodiff(order):
  """The hand-written JVP against autodiff of the plain Gram form: forward, reverse, second order."""
  rng = np.random.default_rng(20 + order)
  c, v = jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal(size=(4, 3)))
  dc, dv = jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal(size=(4, 3)))
  plain = lambda c, v: tensors.cp_inner(c, v, c, v, order)
  fast = lambda c, v: tensors.cp_self_inner(c, v, order)
  np.testing.assert_allclose(float(fast(c, v)), float(plain(c, v)), rtol=1e-13)
  np.testing.assert_allclose(jax.jvp(fast, (c, v), (dc, dv))[1], jax.jvp(plain, (c, v), (dc, dv))[1], rtol=1e-12)
  for a, b in zip(jax.grad(fast, (0, 1))(c, v), jax.grad(plain, (0, 1))(c, v)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
  hvp = lambda f: jax.jvp(jax.grad(f, 1), (c, v), (dc, dv))[1]
  np.testing.assert_allclose(np.asarray(hvp(fast)), np.asarray(hvp(plain)), rtol=1e-11)


@pytest.mark.slow
@pytest.mark.parametrize('order', [2, 3, 4])
def test_cp_residual_sq_custom_jvp_matches_autodiff(order):
  rng = np.random.default_rng(30 + order)
  c, v = jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal(size=(4, 3)))
  t = tensors.symmetrize(jnp.asarray(rng.normal(size=(3,) * order)))
  dc, dv = jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal(size=(4, 3)))
  dt = tensors.symmetrize(jnp.asarray(rng.normal(size=(3,) * order)))
  plain = lambda c, v, t: 0.5 * jnp.sum((tensors.dense_cp(c, v, order) - t) ** 2)
  fast = lambda c, v, t: tensors.cp_residual_sq(c, v, t, order)
  np.testing.assert_allclose(float(fast(c, v, t)), float(np.sum((np_outer_cp(np.asarray(c), np.asarray(v), order)
                                                                  - np.asarray(t)) ** 2) / 2), rtol=1e-12)
  np.testing.assert_allclose(jax.jvp(fast, (c, v, t), (dc, dv, dt))[1], jax.jvp(plain, (c, v, t), (dc, dv, dt))[1],
                             rtol=1e-11)
  for a, b in zip(jax.grad(fast, (0, 1))(c, v, t), jax.grad(plain, (0, 1))(c, v, t)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11)


def test_cp_tensor_is_a_pytree_of_its_factors_with_a_static_order():
  """overparam.CPTensor: dense() is the oracle's tensor; coeffs and factors are its leaves (order is
  static), so a stack of them vmaps."""
  rng = np.random.default_rng(5)
  c, v = rng.normal(size=(2, 3)), rng.normal(size=(2, 3, 4))
  t = tensors.CPTensor(jnp.asarray(c[0]), jnp.asarray(v[0]), 3)
  np.testing.assert_allclose(np.asarray(t.dense()), np_outer_cp(c[0], v[0], 3), rtol=1e-12, atol=1e-12)
  leaves, treedef = jax.tree.flatten(t)
  assert len(leaves) == 2 and jax.tree.unflatten(treedef, leaves).order == 3
  stacked = tensors.CPTensor(jnp.asarray(c), jnp.asarray(v), 4)
  got = np.asarray(jax.vmap(lambda x: x.dense())(stacked))
  for i in range(2):
    np.testing.assert_allclose(got[i], np_outer_cp(c[i], v[i], 4), rtol=1e-12, atol=1e-12)


def test_dense_cp_rejects_bad_shapes():
  with pytest.raises(AssertionError):
    tensors.dense_cp(jnp.ones((3,)), jnp.ones((4, 5)), 3)
  with pytest.raises(ValueError, match='order'):
    tensors.dense_cp(jnp.ones((3,)), jnp.ones((3, 5)), 1)


def test_symmetrize_is_projection():
  x = np.random.default_rng(0).normal(size=(3, 3, 3))
  s = np.asarray(tensors.symmetrize(jnp.asarray(x)))
  np.testing.assert_allclose(s, s.transpose(1, 0, 2), atol=1e-14)
  np.testing.assert_allclose(s, s.transpose(2, 1, 0), atol=1e-14)
  np.testing.assert_allclose(np.asarray(tensors.symmetrize(jnp.asarray(s))), s, atol=1e-14)
  assert not np.allclose(s, x)


KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize('gen', [tensors.random_unit, tensors.orthonormal,
                                 functools.partial(tensors.coherent, coherence=0.3)])
@pytest.mark.slow
def test_generators_unit_and_deterministic(gen):
  a = np.asarray(gen(KEY, 4, 9, dtype=jnp.float64))
  assert a.shape == (4, 9)
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-12)
  np.testing.assert_array_equal(a, np.asarray(gen(KEY, 4, 9, dtype=jnp.float64)))
  assert not np.allclose(a, np.asarray(gen(jax.random.PRNGKey(1), 4, 9, dtype=jnp.float64)))


def test_orthonormal_is_exactly_orthonormal():
  a = np.asarray(tensors.orthonormal(KEY, 5, 7, dtype=jnp.float64))
  np.testing.assert_allclose(a @ a.T, np.eye(5), atol=1e-13)
  with pytest.raises(tensors.TargetError, match='config.rank'):
    tensors.orthonormal(KEY, 8, 7)


@pytest.mark.parametrize('mu', [0.0, 0.3, 0.9])
def test_coherent_has_requested_coherence(mu):
  a = np.asarray(tensors.coherent(KEY, 4, 10, mu, dtype=jnp.float64))
  g = a @ a.T
  np.testing.assert_allclose(g[~np.eye(4, dtype=bool)], mu, atol=1e-12)
  with pytest.raises(tensors.TargetError, match='coherence'):
    tensors.coherent(KEY, 4, 10, 1.0)


@pytest.mark.slow
def test_make_target_weights_and_noise():
  t = tensors.make_target(KEY, 'random_unit', 3, 6, 3, weights=(3.0, 2.0, 1.0), dtype=jnp.float64)
  np.testing.assert_array_equal(np.asarray(t.coeffs), [3.0, 2.0, 1.0])
  assert t.factored and t.dense is None
  clean = tensors.dense_cp(t.coeffs, t.factors, 3)
  np.testing.assert_allclose(float(tensors.target_sq_norm(t, 3)), float(jnp.sum(clean ** 2)), rtol=1e-12)
  noisy = tensors.make_target(KEY, 'random_unit', 3, 6, 3, weights=(3.0, 2.0, 1.0), noise=0.1,
                              dtype=jnp.float64)
  assert not noisy.factored
  np.testing.assert_array_equal(np.asarray(noisy.factors), np.asarray(t.factors))
  n = np.asarray(noisy.dense - clean)
  np.testing.assert_allclose(np.linalg.norm(n) / np.linalg.norm(clean), 0.1, rtol=1e-10)
  np.testing.assert_allclose(n, n.transpose(1, 2, 0), atol=1e-14)
  with pytest.raises(tensors.TargetError, match='weights'):
    tensors.make_target(KEY, 'random_unit', 3, 6, 3, weights=(1.0,))
  with pytest.raises(tensors.TargetError, match='target.kind'):
    tensors.make_target(KEY, 'gaussian', 3, 6, 3)


def _save(tmp_path, name, arr):
  p = tmp_path / name
  np.save(p, arr)
  return str(p)


def test_load_target_file_accepts_symmetric(tmp_path):
  t = np_outer_cp(np.ones(2), np.random.default_rng(0).normal(size=(2, 4)), 3)
  got = tensors.load_target_file(_save(tmp_path, 'ok.npy', t), 3, (4,))
  np.testing.assert_allclose(got, t, rtol=1e-14, atol=1e-15)
  slightly_off = t.copy()
  slightly_off[0, 1, 2] += 1e-7 * np.abs(t).max()  # within tolerance: accepted, then symmetrized
  got = tensors.load_target_file(_save(tmp_path, 'off.npy', slightly_off), 3, (4,))
  np.testing.assert_allclose(got, got.transpose(2, 0, 1), atol=1e-15)
  np.testing.assert_allclose(got, t, atol=1e-7 * np.abs(t).max())


@pytest.mark.parametrize('case, match', [
    ('missing', 'no such file'),
    ('garbage', 'cannot read'),
    ('strings', 'real numeric'),
    ('order', 'order 2'),
    ('nonsquare', 'shape'),
    ('dims', 'config.dims'),
    ('nan', 'non-finite'),
    ('asym', 'not symmetric'),
])
def test_load_target_file_rejects(tmp_path, case, match):
  sym = np_outer_cp(np.ones(2), np.random.default_rng(0).normal(size=(2, 4)), 3)
  if case == 'missing':
    path = str(tmp_path / 'nope.npy')
  elif case == 'garbage':
    path = str(tmp_path / 'garbage.npy')
    (tmp_path / 'garbage.npy').write_bytes(b'not a numpy file')
  elif case == 'strings':
    path = _save(tmp_path, 's.npy', np.array(['a', 'b']))
  elif case == 'order':
    path = _save(tmp_path, 'o.npy', np.eye(4))
  elif case == 'nonsquare':
    path = _save(tmp_path, 'n.npy', np.zeros((4, 4, 3)))
  elif case == 'dims':
    path = _save(tmp_path, 'd.npy', sym)
  elif case == 'nan':
    bad = sym.copy()
    bad[0, 0, 0] = np.nan
    path = _save(tmp_path, 'nan.npy', bad)
  else:
    bad = sym.copy()
    bad[0, 1, 2] += 1.0
    path = _save(tmp_path, 'a.npy', bad)
  dims = (5,) if case == 'dims' else (4,)
  with pytest.raises(tensors.TargetError, match=match) as e:
    tensors.load_target_file(path, 3, dims)
  assert 'config.target.path' in str(e.value)


def _save_npz(tmp_path, name, **arrays):
  p = tmp_path / name
  np.savez(p, **arrays)
  return str(p)


def test_load_target_cp_round_trip(tmp_path):
  rng = np.random.default_rng(3)
  c, a = np.array([2.0, -0.5, 1.0]), rng.normal(size=(3, 5))
  got_c, got_a = tensors.load_target_cp(_save_npz(tmp_path, 't.npz', coeffs=c, factors=a), 4, (5,), 3)
  np.testing.assert_allclose(np.linalg.norm(got_a, axis=1), 1.0, rtol=1e-14)  # unit factors,
  np.testing.assert_allclose(got_c, c * np.linalg.norm(a, axis=1) ** 4, rtol=1e-14)  # norms^l in c*
  assert tensors.is_cp_file('x/t.NPZ') and not tensors.is_cp_file('x/t.npy')
  t = tensors.make_target(KEY, 'file', 4, 5, 3, cp=(got_c, got_a), dtype=jnp.float64)
  assert t.factored
  np.testing.assert_allclose(np.asarray(tensors.dense_cp(t.coeffs, t.factors, 4)), np_outer_cp(c, a, 4), rtol=1e-12)


@pytest.mark.parametrize('arrays, dims, rank, match', [
    (dict(coeffs=np.ones(2)), (4,), 2, 'missing factors'),
    (dict(coeffs=np.ones(2), factors=np.ones((3, 4))), (4,), 2, r'shape \(r,\)'),
    (dict(coeffs=np.ones(2), factors=np.ones((2, 4))), (5,), 2, 'config.dims must be'),
    (dict(coeffs=np.ones(2), factors=np.ones((2, 4))), (4,), 3, 'config.rank must equal'),
    (dict(coeffs=np.array([1.0, np.nan]), factors=np.ones((2, 4))), (4,), 2, 'non-finite'),
    (dict(coeffs=np.ones(2), factors=np.zeros((2, 4))), (4,), 2, 'zero rows'),
    (dict(coeffs=np.array(['a', 'b']), factors=np.ones((2, 4))), (4,), 2, 'real numeric'),
])
def test_load_target_cp_rejects(tmp_path, arrays, dims, rank, match):
  with pytest.raises(tensors.TargetError, match=match):
    tensors.load_target_cp(_save_npz(tmp_path, 'bad.npz', **arrays), 3, dims, rank)
  with pytest.raises(tensors.TargetError, match='no such file'):
    tensors.load_target_cp(str(tmp_path / 'absent.npz'), 3, dims, rank)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.float64])
def test_normal_is_jax_random_normal_bit_for_bit(dtype):
  """tensors.normal (the targets' draws: a prefix of one flat draw) is jax.random.normal exactly."""
  key = jax.random.fold_in(jax.random.PRNGKey(2), 0)
  for shape in ((3, 6), (3, 32), (7, 40), (6, 6, 6), (2000,), (40, 40, 40)):
    np.testing.assert_array_equal(np.asarray(tensors.normal(key, shape, dtype)),
                                  np.asarray(jax.random.normal(key, shape, dtype)))
