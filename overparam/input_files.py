"""The user's inputs, read once and judged before anything runs: input files (a target file) and the
scale of the target T*.

read_input_file reads a file the config names (it must be a regular file: a FIFO, a folder or a
device is named as such, never read or waited on) and returns its bytes and their sha256, so that the
file is parsed from exactly the bytes whose hash the run's fingerprint records (results.with_inputs).

check_target_scale is the accepted range of ||T*||_F (README, "The workdir", Targets):
- every algorithm: T* is not zero (relative to the size of its components) and ||T*||_F is in
  HOST_RANGE, where the host's float64 ||T*||^2 and rel_error are exact enough;
- algorithms that are not scale-free (they fit T* in its own units with an absolute init scale and step
  size: gd, lazy, lazy_exact): ||T*||_F in [sqrt(eps), sqrt(max) / 100] of the run dtype, within
  HOST_RANGE (run_range; float32: [3.5e-4, 1.8e17], float64: [1.5e-8, 1e150]). Below sqrt(eps) a lazy model's residual
  T(W0) + J dW - T* is the rounding error of T(W0), not a fit (measured, lazy_exact d=4 m=40: float64
  rel_error 3e-9 at ||T*|| = 1e-8, 3e-5 at 1e-12, 0.35 at 1e-16, 3e3 at 1e-20; float32 0.02 at 1e-4,
  2.1 at 1e-6); above sqrt(max) / 100 its square leaves the dtype.
"""

import hashlib
import math
import os
import stat
from typing import Optional, Tuple

import numpy as np

from overparam.errors import TargetError

# ||T*||_F outside this range: its float64 square (host rel_error, ||T*||^2) under- or overflows.
HOST_RANGE = (1e-150, 1e150)
# T* with ||T*|| <= ZERO_RELATIVE * (sum of its components' norms) is zero up to rounding (cancellation).
ZERO_RELATIVE = 1e-12


def _kind(mode: int) -> str:
  for test, name in ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISSOCK, 'a socket'),
                     (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device')):
    if test(mode):
      return name
  return 'not a regular file'


def read_input_file(path: str, field: str, accepted: str) -> Tuple[bytes, str]:
  """(bytes, 'sha256:<hex>') of the regular file `path`; TargetError naming `field` and `path` when it
  is missing, a dangling link, a folder, a FIFO, a device or unreadable. accepted: what the field takes,
  for the messages ('a .npy or .npz file')."""
  if not isinstance(path, str) or not path:
    raise TargetError(f'{field} must name {accepted}')
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: a FIFO does not block open
  except FileNotFoundError:
    dangling = os.path.islink(path)
    raise TargetError(f'{field}: no such file {path!r}' + (' (a symbolic link to a missing file)' if dangling else '')
                      ) from None
  except OSError as e:
    raise TargetError(f'{field}: {path!r} cannot be opened ({e.strerror}); give {accepted}') from None
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise TargetError(f'{field}: {path!r} exists but is {_kind(st.st_mode)}, not a regular file; give {accepted}')
    chunks = []
    while True:
      try:
        b = os.read(fd, 1 << 22)
      except OSError as e:
        raise TargetError(f'{field}: {path!r} cannot be read ({e.strerror})') from None
      if not b:
        break
      chunks.append(b)
  finally:
    os.close(fd)
  data = b''.join(chunks)
  return data, 'sha256:' + hashlib.sha256(data).hexdigest()


def dtype_problem(dtype: np.dtype) -> Optional[str]:
  """Why an array of `dtype` is not a real numeric target (None if it is), in words a user can act on."""
  if dtype.kind == 'V':
    if dtype.names:
      what = f'dtype {dtype.str!r}, a structured (record) array'
    elif dtype.name.startswith('void'):
      what = (f'dtype {dtype.str!r}, raw {dtype.itemsize}-byte values (numpy writes bfloat16 and the other ml_dtypes '
              'types this way, without their name)')
    else:
      what = f'dtype {dtype.name}, which numpy does not compute with'
    return f'it holds {what}; convert it to float32 or float64 first (x.astype(np.float32))'
  if dtype.kind == 'c':
    return f'it holds complex numbers (dtype {dtype}); the target must be real'
  if dtype.kind not in 'iuf':
    return f'it must hold a real numeric array, got dtype {dtype}'
  return None


def target_norm(coeffs, factors, dense, order: int) -> Tuple[float, float]:
  """(||T*||_F, the sum of its components' norms) in float64 without overflow or underflow: the tensor
  is divided by its largest entry (dense) or component weight (CP) first. inf when it is not finite."""
  with np.errstate(over='ignore', under='ignore', invalid='ignore'):
    if dense is not None:
      x = np.asarray(dense, np.float64)
      s = float(np.max(np.abs(x))) if x.size else 0.0
      if not math.isfinite(s):
        return math.inf, math.inf
      if s == 0.0:
        return 0.0, 0.0
      norm = s * float(np.linalg.norm(x / s))
      return norm, norm
    a = np.asarray(factors, np.float64)
    n = np.linalg.norm(a, axis=1)
    w = np.asarray(coeffs, np.float64) * n ** order  # the weight of each unit-norm component
    if not np.all(np.isfinite(w)):
      return math.inf, math.inf
    s = float(np.max(np.abs(w))) if w.size else 0.0
    if s == 0.0:
      return 0.0, 0.0
    u = a / np.where(n > 0, n, 1.0)[:, None]
    v = w / s
    sq = float(v @ ((u @ u.T) ** order) @ v)
    return s * math.sqrt(max(sq, 0.0)), s * float(np.sum(np.abs(v)))


def run_range(dtype) -> Tuple[float, float]:
  """The ||T*||_F a run in `dtype` of an algorithm that is not scale-free accepts:
  [sqrt(eps), min(sqrt(max) / 100, HOST_RANGE[1])]."""
  fi = np.finfo(np.dtype(dtype))
  return math.sqrt(float(fi.eps)), min(math.sqrt(float(fi.max)) / 100, HOST_RANGE[1])


def check_target_scale(coeffs, factors, dense, order: int, dtype, where: str, scale_free: bool):
  """TargetError naming `where` when T* is zero or its norm is outside the accepted range (module
  docstring): HOST_RANGE for every algorithm, and the run dtype's [sqrt(eps), sqrt(max) / 100] when an
  algorithm of the run is not scale-free."""
  norm, size = target_norm(coeffs, factors, dense, order)
  if norm == 0.0 or (math.isfinite(norm) and norm <= ZERO_RELATIVE * size):
    raise TargetError(f'{where}: T* is zero; a decomposition of the zero tensor is undefined')
  if not math.isfinite(norm):
    fi = np.finfo(np.dtype(dtype))
    wider = '' if fi.dtype == np.float64 else ' or set config.x64=True'
    raise TargetError(f'{where}: T* is not finite in the run dtype {fi.dtype} (a weight or entry overflows it, '
                      f'beyond {float(fi.max):.2g}); rescale the target{wider}')
  lo, hi = HOST_RANGE
  if not lo <= norm <= hi:
    raise TargetError(f'{where}: ||T*||_F = {norm:.3g} is outside [{lo:.0e}, {hi:.0e}], the range in which the '
                      'host computes ||T*||^2 and rel_error in float64; rescale the target')
  if scale_free:
    return
  fi = np.finfo(np.dtype(dtype))
  lo, hi = run_range(dtype)
  if not lo <= norm <= hi:
    wider = '' if fi.dtype == np.float64 else ' or set config.x64=True (float64 accepts [%.2g, %.2g])' % run_range(np.float64)
    raise TargetError(f'{where}: ||T*||_F = {norm:.3g} is outside [{lo:.2g}, {hi:.2g}], the scale {fi.dtype} runs of '
                      'algorithms that fit T* in its own units resolve (below it a lazy model\'s residual is '
                      f'rounding error of T(W0)); rescale the target{wider}')
