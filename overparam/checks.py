"""Argument checks shared by the library's constructors and the config validation.

Each check raises errors.ArgumentError(name, requirement, value) with a one-line requirement
("a finite number > 0"), so the library names the argument and the config layer names its field.
Values that are JAX tracers (an argument under jit or vmap) cannot be inspected and pass unchecked;
concrete arrays are checked element by element.
"""

import math
import numbers
from typing import Sequence

import jax
import numpy as np

from overparam.errors import ArgumentError


def is_int(x) -> bool:
  """An integer that is not a bool (numpy integers count)."""
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _range_text(lo, lo_open, hi, hi_open) -> str:
  parts = []
  if lo is not None:
    parts.append(f'{">" if lo_open else ">="} {lo:g}')
  if hi is not None:
    parts.append(f'{"<" if hi_open else "<="} {hi:g}')
  return ' and '.join(parts)


def number(name: str, x, lo=None, lo_open=False, hi=None, hi_open=False):
  """x is a finite real number (or a concrete real array of them) in the given range; returns x."""
  what = 'a finite number' + (f' {_range_text(lo, lo_open, hi, hi_open)}' if lo is not None or hi is not None else '')
  if is_traced(x):
    return x
  if isinstance(x, bool) or isinstance(x, (str, bytes)) or x is None:
    raise ArgumentError(name, what, x)
  try:
    arr = np.asarray(x)
  except Exception:  # noqa: BLE001 - anything that is not array-like is refused the same way
    raise ArgumentError(name, what, x) from None
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise ArgumentError(name, what, x)
  a = arr.astype(np.float64)
  bad = ~np.isfinite(a)
  if lo is not None:
    bad |= (a < lo) | ((a == lo) if lo_open else False)
  if hi is not None:
    bad |= (a > hi) | ((a == hi) if hi_open else False)
  if np.any(bad):
    raise ArgumentError(name, what, x if arr.ndim == 0 else a[bad].ravel()[0].item())
  return x


def integer(name: str, x, lo=None, hi=None) -> int:
  """x is a Python/numpy integer in [lo, hi]; returns int(x)."""
  what = 'an integer' + (f' {_range_text(lo, False, hi, False)}' if lo is not None or hi is not None else '')
  if not is_int(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
    raise ArgumentError(name, what, x)
  return int(x)


def boolean(name: str, x) -> bool:
  if not isinstance(x, (bool, np.bool_)):
    raise ArgumentError(name, 'True or False', x)
  return bool(x)


def choice(name: str, x, allowed: Sequence[str]) -> str:
  if not isinstance(x, str) or x not in allowed:
    raise ArgumentError(name, f'one of {", ".join(allowed)}', x)
  return x


def is_concrete_value(x, value) -> bool:
  """True when x is a concrete Python or numpy scalar equal to `value` (False for tracers and arrays
  with a batch axis): used to pick a cheaper static path for a default hyperparameter value."""
  if is_traced(x):
    return False
  arr = np.asarray(x)
  return arr.ndim == 0 and math.isfinite(float(arr)) and float(arr) == value
