"""Validation of the library's inputs: targets (dense symmetric arrays, CP tensors), widths, eps.

Every check raises a one-line errors.UserError naming the argument and what is accepted, before
anything is compiled. Values that are JAX tracers (fit under the user's jit or vmap) are checked for
shape and dtype only.
"""

import itertools
import math
import numbers
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from overparam import checks, tensors
from overparam.errors import ArgumentError, TargetError

# Relative asymmetry (max |T - T^perm| / max |T|) accepted in a dense target; it is projected out.
SYM_TOL = 1e-5


def _is_array_like(x) -> bool:
  return isinstance(x, (np.ndarray, jax.Array, list, tuple, numbers.Number)) or hasattr(x, '__array__')


def run_dtype(dtype) -> np.dtype:
  """The float dtype a run of an input of `dtype` uses: float32/float64 as given; integers the default
  float (float64 when jax_enable_x64 is on). TargetError for anything else."""
  dtype = np.dtype(dtype)
  if dtype in (np.float32, np.float64):
    if dtype == np.float64 and not jax.config.jax_enable_x64:
      return np.dtype(np.float32)
    return dtype
  if np.issubdtype(dtype, np.integer) and dtype != np.bool_:
    return np.dtype(jnp.result_type(float))
  raise TargetError(f'target: dtype must be float32 or float64 (or integer), got {dtype.name}')


def _array(x, name: str):
  """x as a jax array (tracers pass through) with a real dtype; TargetError naming `name`."""
  if isinstance(x, jax.core.Tracer):
    return x
  try:
    arr = np.asarray(x)
  except Exception:  # noqa: BLE001 - ragged lists and objects are refused alike
    raise TargetError(f'{name} must be a numeric array, got {type(x).__name__}') from None
  if arr.dtype == object:
    raise TargetError(f'{name} must be a numeric array (got a ragged or non-numeric {type(x).__name__})')
  return arr


def _finite(arr, name: str):
  if not checks.is_traced(arr):
    bad = int(np.sum(~np.isfinite(np.asarray(arr, np.float64))))
    if bad:
      raise TargetError(f'{name} has {bad} non-finite entries')


def as_target(target, order: Optional[int] = None) -> Tuple[tensors.Target, int, str]:
  """(tensors.Target, order l, loss kind) of a user's target.

  target: a dense symmetric array of shape (d,)*l (numpy, JAX or nested lists; l = its ndim), or a
    tensors.CPTensor(coeffs (r,), factors (r, d), order), or a tuple (coeffs, factors, order) (the
    implicit loss: T* is never formed densely). order: checked against the target's when given.
  Dense arrays are checked for finiteness and symmetry (relative gap SYM_TOL, then symmetrized);
  TargetError names `target` and what is wrong.
  """
  if isinstance(target, tuple) and len(target) == 3 and checks.is_int(target[2]):
    target = tensors.CPTensor(*target)
  if isinstance(target, tensors.CPTensor):
    c, a = _array(target.coeffs, 'target.coeffs'), _array(target.factors, 'target.factors')
    if not checks.is_int(target.order) or target.order < 2:
      raise TargetError(f'target.order must be an integer >= 2, got {target.order!r}')
    if c.ndim != 1 or a.ndim != 2 or a.shape[0] != c.shape[0] or c.shape[0] < 1 or a.shape[1] < 1:
      raise TargetError(f'target: coeffs must have shape (r,) and factors (r, d) with r, d >= 1, got '
                        f'{tuple(c.shape)} and {tuple(a.shape)}')
    if order is not None and order != target.order:
      raise TargetError(f'target: CPTensor has order {target.order}, order is {order}')
    dtype = run_dtype(jnp.result_type(c.dtype, a.dtype))
    _finite(c, 'target.coeffs')
    _finite(a, 'target.factors')
    return tensors.Target(coeffs=jnp.asarray(c, dtype), factors=jnp.asarray(a, dtype)), int(target.order), 'implicit'
  arr, order = checked_dense(target, order)
  if checks.is_traced(arr):  # under the user's jit/vmap: shape and dtype only; taken as symmetric
    return tensors.Target(dense=jnp.asarray(arr, run_dtype(arr.dtype))), order, 'dense'
  return tensors.Target(dense=jnp.asarray(arr, run_dtype(np.asarray(target).dtype))), order, 'dense'


def checked_dense(target, order: Optional[int] = None):
  """(array, order) of a dense target: a tracer passes with its shape checked; a concrete array is
  returned in float64, checked finite, non-zero and symmetric (relative gap SYM_TOL; within it, the
  asymmetry is projected out: the dense loss's gradient assumes a symmetric T*). TargetError."""
  if not _is_array_like(target):
    raise TargetError(f'target must be a symmetric array (d,)*l or a CPTensor(coeffs, factors, order), got '
                      f'{type(target).__name__}')
  arr = _array(target, 'target')
  if arr.ndim < 2 or len(set(arr.shape)) != 1 or arr.shape[0] < 1:
    raise TargetError(f'target must be a symmetric array of shape (d,)*l with l >= 2 and d >= 1, got shape '
                      f'{tuple(arr.shape)}')
  if order is not None and order != arr.ndim:
    raise TargetError(f'target: array has order (ndim) {arr.ndim}, order is {order}')
  run_dtype(arr.dtype)  # a dtype the library runs in
  if checks.is_traced(arr):
    return arr, arr.ndim
  _finite(arr, 'target')
  a64 = np.asarray(arr, np.float64)
  if float(np.max(np.abs(a64))) == 0.0:
    raise TargetError('target is the zero tensor: its decomposition is undefined')
  gap, k = tensors.asymmetry(a64)
  if gap > SYM_TOL:
    raise TargetError(f'target is not symmetric (relative gap {gap:.2e} under swapping axes {k} and {k + 1}, '
                      f'tolerance {SYM_TOL:.0e})')
  perms = list(itertools.permutations(range(arr.ndim)))
  if any(not np.array_equal(a64, a64.transpose(p)) for p in perms):
    a64 = sum(a64.transpose(p) for p in perms) / math.factorial(arr.ndim)
  return a64, arr.ndim


def width(m) -> int:
  """The width m: an integer >= 1."""
  return checks.integer('width', m, 1)


def eps(x):
  """eps: a number in (0, 1), or None (train to the plateau)."""
  if x is None:
    return None
  return checks.number('eps', x, 0.0, True, 1.0, True)


def steps(n) -> int:
  return checks.integer('steps', n, 0, 2 ** 31 - 1)


def algorithm(alg, base) -> None:
  if not isinstance(alg, base):
    raise ArgumentError('algorithm', 'an algorithm value such as overparam.gd() or overparam.beyond_lazy()',
                        type(alg).__name__)
