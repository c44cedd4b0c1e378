"""The space of symmetric order-l tensors on R^d and its orthonormal basis of unique entries.

Symmetric tensors form a space of dimension N = C(d + l - 1, l) (`sym_dim`). Writing a symmetric T in
the coordinates sqrt(mult_e) T[e] over the sorted multi-indices e (mult_e = number of dense positions
holding entry e) is an isometry onto R^N: ||to_unique(T)|| = ||T||_F. The lazy least-squares problems
are solved in these coordinates (N rows instead of d^l).
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np



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
