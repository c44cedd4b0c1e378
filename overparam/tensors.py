"""Symmetric CP tensors: dense construction, implicit inner products, ground truths.

A symmetric CP tensor of order l is T = sum_i c_i v_i^{(x)l} with coeffs c (m,) and factors V (m, d).
Inner products never need the dense (d,)*l array: <u^{(x)l}, w^{(x)l}> = (u . w)^l, so
<T(c, V), T(c', V')> = c^T (V V'^T)^{.l} c'.
"""

import dataclasses
import functools
import io
import itertools
import math
from typing import NamedTuple, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from overparam import input_files
from overparam.errors import TargetError  # noqa: F401 - re-exported: tensors.TargetError

TARGET_KINDS = ('random_unit', 'orthonormal', 'coherent', 'file')




class Target(NamedTuple):
  """Ground truth T*. A pytree: fields that are None are absent.

  coeffs (r,), factors (r, d): the CP structure, when known.
  dense (d,)*l: the dense tensor, when the target is not exactly the CP tensor
    (a file, or added noise); when both are given, `dense` is the target and the CP
    structure is what recovery metrics compare against.
  """
  coeffs: Optional[jax.Array] = None
  factors: Optional[jax.Array] = None
  dense: Optional[jax.Array] = None

  @property
  def factored(self) -> bool:
    """True when T* is exactly sum_j coeffs_j factors_j^{(x)l} (the implicit loss applies)."""
    return self.dense is None and self.factors is not None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CPTensor:
  """A symmetric CP tensor T = sum_j coeffs_j factors_j^{(x)order}, never formed densely: a target of
  overparam.fit (trained with the implicit loss) and the form of a Decomposition.

  coeffs (r,), factors (r, d): pytree leaves (stack them to vmap over targets); order: static.
  """
  coeffs: jax.Array
  factors: jax.Array
  order: int = dataclasses.field(metadata=dict(static=True))

  def dense(self) -> jax.Array:
    """The (d,)*order array (O(r d^order))."""
    return dense_cp(self.coeffs, self.factors, self.order)


def _khatri_rao_power(factors: jax.Array, k: int) -> jax.Array:
  """Row-wise Khatri-Rao power: (m, d) -> (m, d^k), row i = vec(v_i^{(x)k})."""
  m = factors.shape[0]
  kr = factors
  for _ in range(k - 1):
    kr = (kr[:, :, None] * factors[:, None, :]).reshape(m, -1)
  return kr


def dense_cp(coeffs: jax.Array, factors: jax.Array, order: int) -> jax.Array:
  """sum_i coeffs_i factors_i^{(x)order}.  coeffs (m,), factors (m, d) -> (d,)*order.

  Lowered as one matmul: (c * V)^T (m, d) against the row-wise Khatri-Rao power
  V^{(.)(l-1)} (m, d^{l-1}), so the O(m d^l) work is a single GEMM.
  """
  chex.assert_rank([coeffs, factors], [1, 2])
  chex.assert_equal_shape_prefix([coeffs, factors], 1)
  if order < 2:
    raise ValueError(f'order must be >= 2, got {order}')
  d = factors.shape[1]
  flat = (coeffs[:, None] * factors).T @ _khatri_rao_power(factors, order - 1)
  return flat.reshape((d,) * order)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def cp_residual_sq(coeffs, factors, t_star, order: int) -> jax.Array:
  """1/2 ||T(c, V) - T*||_F^2 for a SYMMETRIC dense T* (d,)*l: the dense loss.

  The hand-written JVP uses the symmetry of the residual R: the gradient needs only
  R(v_i, ..., v_i, .) = R_(1) KR_i, one GEMM, so a value-and-gradient costs 4 m d^l flops
  (forward GEMM + one backward GEMM) instead of autodiff's 6 m d^l.
  """
  r = dense_cp(coeffs, factors, order) - t_star
  return 0.5 * jnp.vdot(r, r)


@cp_residual_sq.defjvp
def _cp_residual_sq_jvp(order, primals, tangents):
  c, v, t_star = primals
  dc, dv, dt = tangents
  d = v.shape[1]
  kr = _khatri_rao_power(v, order - 1)                        # (m, d^{l-1})
  r = (c[:, None] * v).T @ kr - t_star.reshape(d, -1)        # residual, unfolded (d, d^{l-1})
  rk = kr @ r.T                                              # (m, d): row i = R(v_i, ..., v_i, .)
  r_vl = jnp.sum(rk * v, axis=1)                             # R(v_i, ..., v_i)
  tangent = jnp.vdot(r_vl, dc) + order * jnp.vdot(c[:, None] * rk, dv) - jnp.vdot(r, dt.reshape(d, -1))
  return 0.5 * jnp.vdot(r, r), tangent


def cp_inner(coeffs1, factors1, coeffs2, factors2, order: int) -> jax.Array:
  """<T(c1, V1), T(c2, V2)> = c1^T (V1 V2^T)^{.order} c2, never forming a d^l array."""
  return coeffs1 @ ((factors1 @ factors2.T) ** order) @ coeffs2


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def cp_self_inner(coeffs, factors, order: int) -> jax.Array:
  """||T(c, V)||_F^2 = c^T (V V^T)^{.l} c, the O(m^2 d) term of the implicit loss.

  Same value as cp_inner(c, V, c, V, l), with a hand-written JVP that uses the symmetry of
  G = V V^T: d/dV = 2 l (c c^T o G^{.(l-1)}) V is one matmul where autodiff of cp_inner spends
  two (dG V and dG^T V), so a value-and-gradient costs 4 m^2 d flops instead of 6 m^2 d.
  """
  return cp_inner(coeffs, factors, coeffs, factors, order)


@cp_self_inner.defjvp
def _cp_self_inner_jvp(order, primals, tangents):
  c, v = primals
  dc, dv = tangents
  g = v @ v.T
  g_lm1 = g ** (order - 1)
  pc = (g_lm1 * g) @ c
  mv = (c[:, None] * c[None, :] * g_lm1) @ v
  return c @ pc, 2.0 * jnp.vdot(pc, dc) + 2.0 * order * jnp.vdot(mv, dv)


def asymmetry(arr) -> tuple:
  """(largest relative gap max|T - T^perm| / max|T|, the first axis k of the adjacent swap (k, k+1)
  that has it) of a numpy array: 0 for a symmetric tensor (adjacent swaps generate every permutation)."""
  a = np.asarray(arr, np.float64)
  scale = max(float(np.max(np.abs(a))), np.finfo(np.float64).tiny)
  worst, at = 0.0, 0
  for k in range(a.ndim - 1):
    perm = list(range(a.ndim))
    perm[k], perm[k + 1] = perm[k + 1], perm[k]
    gap = float(np.max(np.abs(a - a.transpose(perm)))) / scale
    if gap > worst:
      worst, at = gap, k
  return worst, at


def symmetrize(t: jax.Array) -> jax.Array:
  """Average of t over all permutations of its axes (the projection onto symmetric tensors)."""
  perms = list(itertools.permutations(range(t.ndim)))
  return sum(jnp.transpose(t, p) for p in perms) / len(perms)


def _unit_rows(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def normal(key, shape, dtype=jnp.float32) -> jax.Array:
  """jax.random.normal(key, shape, dtype), bit for bit, as the first prod(shape) numbers of a flat
  draw of at least 1024 (a power of two), reshaped. With jax's partitionable threefry the counters
  of a shape are its elements' linear indices, so the numbers are the same (tests/test_tensors.py);
  but one compiled draw serves every target shape up to 1024 numbers instead of one compile (~0.4 s
  for a 2-d shape) per (rank, d). Other threefry settings: jax.random.normal itself."""
  if not jax.config.jax_threefry_partitionable:
    return jax.random.normal(key, shape, dtype)
  n = math.prod(shape)
  size = max(1024, 1 << max(0, n - 1).bit_length())
  return jax.random.normal(key, (size,), dtype)[:n].reshape(shape)


def random_unit(key, rank: int, dim: int, dtype=jnp.float32) -> jax.Array:
  """(rank, dim) i.i.d. uniform on the unit sphere."""
  return _unit_rows(normal(key, (rank, dim), dtype))


def orthonormal(key, rank: int, dim: int, dtype=jnp.float32) -> jax.Array:
  """(rank, dim) orthonormal rows, a uniformly random frame (QR of a Gaussian matrix)."""
  if rank > dim:
    raise TargetError(f'config.rank must be <= dim for orthonormal targets, got rank={rank} > d={dim}')
  q, r = jnp.linalg.qr(normal(key, (dim, rank), dtype))
  return (q * jnp.sign(jnp.diagonal(r))).T


def coherent(key, rank: int, dim: int, coherence: float, dtype=jnp.float32) -> jax.Array:
  """(rank, dim) unit rows with every pairwise inner product exactly `coherence` in [0, 1).

  a_j = sqrt(mu) q_0 + sqrt(1 - mu) q_j for an orthonormal frame q_0..q_r (needs d >= r + 1).
  """
  if not 0.0 <= coherence < 1.0:
    raise TargetError(f'config.target.coherence must be in [0, 1), got {coherence}')
  if rank + 1 > dim:
    raise TargetError(f'config.rank must be <= d - 1 for coherent targets, got rank={rank}, d={dim}')
  q = orthonormal(key, rank + 1, dim, dtype)
  return jnp.sqrt(coherence) * q[:1] + jnp.sqrt(1.0 - coherence) * q[1:]


def make_target(key, kind: str, order: int, dim: int, rank: int, *,
                weights: Sequence[float] = (), coherence: float = 0.0, noise: float = 0.0,
                dense: Optional[np.ndarray] = None, cp: Optional[tuple] = None,
                dtype=jnp.float32) -> Target:
  """Builds T* for one seed. `key` drives the factors; noise uses fold_in(key, 1).

  kind: one of TARGET_KINDS; 'file' takes the already validated `dense` array (a .npy file) or
  `cp` = (coeffs, factors) (a .npz file, see load_target_cp).
  weights: c*_j, length rank (empty: all ones). noise: Gaussian noise, symmetrized and scaled
  to `noise * ||T*||_F`, added to the dense target.
  """
  if kind == 'file':
    if cp is not None:
      t = Target(coeffs=jnp.asarray(cp[0], dtype), factors=jnp.asarray(cp[1], dtype))
    elif dense is None:
      raise TargetError('config.target.path must name a .npy or .npz file for target.kind=file')
    else:
      t = Target(dense=jnp.asarray(dense, dtype))
  else:
    if kind == 'random_unit':
      a = random_unit(key, rank, dim, dtype)
    elif kind == 'orthonormal':
      a = orthonormal(key, rank, dim, dtype)
    elif kind == 'coherent':
      a = coherent(key, rank, dim, coherence, dtype)
    else:
      raise TargetError(f'config.target.kind must be one of {TARGET_KINDS}, got {kind!r}')
    if weights:
      if len(weights) != rank:
        raise TargetError(f'config.target.weights must have length rank={rank}, got {len(weights)}')
      c = jnp.asarray(weights, dtype)
    else:
      c = jnp.ones((rank,), dtype)
    t = Target(coeffs=c, factors=a)
  if noise:
    clean = t.dense if t.dense is not None else dense_cp(t.coeffs, t.factors, order)
    n = symmetrize(normal(jax.random.fold_in(key, 1), (dim,) * order, dtype))
    noisy = clean + noise * jnp.linalg.norm(clean) / jnp.linalg.norm(n) * n
    t = t._replace(dense=noisy)
  return t


def target_sq_norm(target: Target, order: int) -> jax.Array:
  """||T*||_F^2."""
  if target.dense is not None:
    return jnp.sum(target.dense ** 2)
  return cp_self_inner(target.coeffs, target.factors, order)


def is_cp_file(path: str) -> bool:
  """A .npz target file holds a CP tensor (coeffs, factors); a .npy file a dense tensor."""
  return str(path).lower().endswith('.npz')


_FIELD = 'config.target.path'
_ACCEPTED = 'a .npy file (a dense (d,)*l array) or a .npz file (coeffs, factors)'


def load_target(path: str, order: int, dims: Sequence[int], rank: int):
  """(the validated target of a target file, its content digest 'sha256:<hex>'): a .npz file gives
  (coeffs, factors) (load_target_cp), any other a dense array (load_target_file). The file is read once
  and parsed from the bytes whose digest is returned, so the run's fingerprint (results.with_inputs)
  names exactly the tensor that was fitted."""
  data, digest = input_files.read_input_file(path, _FIELD, _ACCEPTED)
  if is_cp_file(path):
    return _parse_cp(data, path, order, dims, rank), digest
  return _parse_dense(data, path, order, dims), digest


def load_target_cp(path: str, order: int, dims: Sequence[int], rank: int) -> tuple:
  """Loads and validates a user's CP target: a .npz with `coeffs` (r,) and `factors` (r, d).

  T* = sum_j coeffs_j factors_j^{(x)l} for any order l (the params/*.npz a run exports is such a
  file). The target is factored, so the implicit loss and the recovery metrics apply. Raises
  TargetError naming config.target.path (or rank, when given, which must equal r) and what is wrong.
  Returns float64 (coeffs * ||factors_j||^order, factors / ||factors_j||): the same tensor with unit
  factors, as generated targets have (c*_j is then the weight the recovery metrics compare with).
  """
  data, _ = input_files.read_input_file(path, _FIELD, 'a .npz file with arrays coeffs (r,) and factors (r, d)')
  return _parse_cp(data, path, order, dims, rank)


def _parse_cp(data: bytes, path: str, order: int, dims: Sequence[int], rank: int) -> tuple:
  field = _FIELD
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001 - any failure to parse is the same user error
    raise TargetError(f'{field}: cannot read {path!r} as a .npz archive ({type(e).__name__})') from None
  missing = [k for k in ('coeffs', 'factors') if k not in arrays]
  if missing:
    raise TargetError(f'{field}: {path!r} must hold arrays coeffs (r,) and factors (r, d); missing {", ".join(missing)}')
  c, a = arrays['coeffs'], arrays['factors']
  for name, x in (('coeffs', c), ('factors', a)):
    problem = input_files.dtype_problem(x.dtype)
    if problem:
      raise TargetError(f'{field}: {name} in {path!r}: {problem}')
    if not np.all(np.isfinite(x)):
      raise TargetError(f'{field}: {name} has {int(np.sum(~np.isfinite(x)))} non-finite entries')
  if c.ndim != 1 or a.ndim != 2 or a.shape[0] != c.shape[0] or c.shape[0] == 0:
    raise TargetError(f'{field}: coeffs must have shape (r,) and factors (r, d) with r >= 1, got '
                      f'{c.shape} and {a.shape}')
  if a.shape[1] == 0:
    raise TargetError(f'{field}: factors in {path!r} have shape {a.shape}, no coordinates (d = 0); a target needs '
                      'd >= 1')
  if tuple(dims) != (a.shape[1],):
    raise TargetError(f'{field}: factors have d={a.shape[1]}, config.dims must be ({a.shape[1]},), got {tuple(dims)}')
  if rank is not None and rank != c.shape[0]:
    raise TargetError(f'config.rank must equal the number of components in {field} ({c.shape[0]}), got {rank}')
  if np.any(np.linalg.norm(a, axis=1) == 0) or not np.any(c):
    raise TargetError(f'{field}: factors has zero rows or coeffs are all zero (T* must be a nonzero CP tensor '
                      'with a direction per component)')
  a = a.astype(np.float64)
  norms = np.linalg.norm(a, axis=1)
  with np.errstate(over='ignore'):
    return c.astype(np.float64) * norms ** order, a / norms[:, None]


def load_target_file(path: str, order: int, dims: Sequence[int], sym_tol: float = 1e-5) -> np.ndarray:
  """Loads and validates a user's dense symmetric target (.npy of shape (d,)*order).

  Raises TargetError naming config.target.path and what is wrong: missing file, not a regular file
  (a folder, a FIFO, a device), unreadable file, not a real numeric array (the dtype named in words),
  wrong order or shape, an empty array, non-finite entries, or asymmetry beyond sym_tol * max|T|.
  """
  data, _ = input_files.read_input_file(path, _FIELD, 'a .npy file (a dense (d,)*l array)')
  return _parse_dense(data, path, order, dims, sym_tol)


def _parse_dense(data: bytes, path: str, order: int, dims: Sequence[int], sym_tol: float = 1e-5) -> np.ndarray:
  field = _FIELD
  try:
    arr = np.load(io.BytesIO(data), allow_pickle=False)
  except Exception as e:  # noqa: BLE001 - any failure to parse is the same user error
    raise TargetError(f'{field}: cannot read {path!r} as a .npy array ({type(e).__name__})') from None
  if not isinstance(arr, np.ndarray):
    if hasattr(arr, 'close'):
      arr.close()
    raise TargetError(f'{field}: {path!r} is a .npz archive; name it NAME.npz (coeffs, factors) or save one array '
                      'with np.save')
  problem = input_files.dtype_problem(arr.dtype)
  if problem:
    raise TargetError(f'{field}: {path!r}: {problem}')
  if arr.ndim != order:
    raise TargetError(f'{field}: array has order {arr.ndim}, config.order is {order}')
  if len(set(arr.shape)) != 1:
    raise TargetError(f'{field}: array must have shape (d,)*{order}, got {arr.shape}')
  if arr.shape[0] == 0:
    raise TargetError(f'{field}: {path!r} holds an empty array (shape {arr.shape}); a target needs d >= 1')
  if tuple(dims) != (arr.shape[0],):
    raise TargetError(f'{field}: array has d={arr.shape[0]}, config.dims must be ({arr.shape[0]},), got {tuple(dims)}')
  if not np.all(np.isfinite(arr)):
    raise TargetError(f'{field}: array has {int(np.sum(~np.isfinite(arr)))} non-finite entries')
  gap, k = asymmetry(arr)
  if gap > sym_tol:
    raise TargetError(f'{field}: array is not symmetric (relative gap {gap:.2e} under swapping axes '
                      f'{k} and {k + 1}, tolerance {sym_tol:.0e})')
  # Project out the asymmetry within tolerance: the dense loss's gradient assumes a symmetric T*,
  # and for a symmetric model ||T - T*||^2 = ||T - sym(T*)||^2 + const.
  arr = arr.astype(np.float64)
  perms = list(itertools.permutations(range(order)))
  return sum(arr.transpose(p) for p in perms) / len(perms)
