"""The targets of a sweep: T* per (common cell-axis values, d, seed) from the config, checked.

Seed s has keys fold_in(PRNGKey(s), i): 0 the target, 1 the init, 2 the re-initializations (fit derives
1 and 2 from its key the same way), 3 the samples (network.sample_key).
"""

import functools
import math
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from overparam import config_lib, input_files, tensors

# Algorithms whose spec is scale_free fit T* / ||T*|| (their numbers do not depend on the scale of
# T*): the host divides their target by a power of two near ||T*|| (exact in floating point) when
# ||T*|| is outside SAFE_SCALE, so any finite non-zero target trains alike; rows and params are in the
# target's units.
SAFE_SCALE = (2.0 ** -20, 2.0 ** 20)


def seed_keys(seed: int):
  """(target, init, reinit) keys of one seed, each derived from PRNGKey(seed) by fold_in."""
  key = jax.random.PRNGKey(seed)
  return tuple(jax.random.fold_in(key, i) for i in range(3))


def load_file(c):
  """(the validated target file of config.target.path: a dense array (.npy) or (coeffs, factors)
  (.npz), its content digest 'sha256:<hex>'), or (None, None) when target.kind is not file. A .npz
  target gives its own rank (config.rank is not read). The file is read once and parsed from the bytes
  whose digest the run's fingerprint records (results.with_inputs)."""
  if c.target.kind != 'file':
    return None, None
  return tensors.load_target(c.target.path, c.order, c.dims, None)


def row_rank(c) -> Optional[int]:
  """The rank the rows record: config.rank for generated targets; a .npz target's own r; a dense .npy
  target's config.target.rank when given, else None (unknown: rank-based metrics are skipped)."""
  if c.target.kind != 'file':
    return int(c.rank)
  if tensors.is_cp_file(c.target.path):
    return _npz_rank(c.target.path, *_stamp(c.target.path))
  return int(c.target.rank) or None


def _stamp(path: str):
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _npz_rank(path: str, size: int, mtime_ns: int) -> int:
  with np.load(path, allow_pickle=False) as z:
    return int(z['coeffs'].shape[0])


def make_target(c, dim: int, seed: int, file_array) -> tensors.Target:
  """T* of one seed (host numpy arrays in the run dtype). file_array: load_file(c)."""
  cp = file_array if isinstance(file_array, tuple) else None
  t = tensors.make_target(seed_keys(seed)[0], c.target.kind, c.order, dim, c.rank,
                          weights=tuple(c.target.weights), coherence=c.target.coherence,
                          noise=c.target.noise, dense=None if cp else file_array, cp=cp,
                          dtype=config_lib.dtype_of(c))
  return jax.tree.map(np.asarray, t)


def target_sq_f64(t: tensors.Target, order: int) -> float:
  """||T*||_F^2 on the host in float64."""
  if t.dense is not None:
    return float(np.sum(np.asarray(t.dense, np.float64) ** 2))
  c, a = np.asarray(t.coeffs, np.float64), np.asarray(t.factors, np.float64)
  return float(c @ (a @ a.T) ** order @ c)


def check_target(c, t: tensors.Target, dim: int, seed: int, scale_free: bool):
  """TargetError naming the target when T* is zero (all weights 0, an all-zero file, components that
  cancel) or its norm is outside the accepted range (input_files.check_target_scale: the host's
  float64 range for every algorithm; the run dtype's [sqrt(eps), sqrt(max) / 100] for one that is not
  scale-free)."""
  where = (f'config.target.path {c.target.path!r}' if c.target.kind == 'file'
           else f'config.target (kind {c.target.kind}, weights {tuple(c.target.weights) or "all 1"})')
  input_files.check_target_scale(t.coeffs, t.factors, t.dense, c.order, config_lib.dtype_of(c),
                                 f'{where} (d={dim}, seed {seed})', scale_free)


def target_scale(t: tensors.Target, order: int) -> float:
  """The power of two the host divides a scale-free algorithm's target by (1.0 for ordinary targets)."""
  norm = float(np.sqrt(target_sq_f64(t, order)))
  if SAFE_SCALE[0] <= norm <= SAFE_SCALE[1]:
    return 1.0
  return float(2.0 ** round(math.log2(norm)))


def scaled_target(t: tensors.Target, s: float) -> tensors.Target:
  """T* / s for a power of two s (exact), in T*'s dtype."""
  if s == 1.0:
    return t
  div = lambda x: None if x is None else (np.asarray(x, np.float64) / s).astype(np.asarray(x).dtype)
  return t._replace(coeffs=div(t.coeffs), dense=div(t.dense))


def key_of(common: Dict) -> tuple:
  """A hashable key of the common axis values of one target set."""
  return tuple(sorted(common.items()))


def build_all(c, seeds, scale_free: bool, file_array=None) -> Dict[tuple, Dict[int, tensors.Target]]:
  """{(key_of(common values), d): {seed: T*}} for every common cell-axis value and d, each checked.
  file_array: load_file(c)[0]."""
  out = {}
  for cc, common in config_lib.common_configs(c):
    for dim in c.dims:
      out[(key_of(common), dim)] = {s: make_target(cc, dim, s, file_array) for s in seeds}
      for s, t in out[(key_of(common), dim)].items():
        check_target(cc, t, dim, s, scale_free=scale_free)
  return out


def dense_of(t: tensors.Target, order: int) -> tensors.Target:
  """t with its dense (d,)*l array (built once, on the host's JAX)."""
  if t.dense is not None:
    return t
  return t._replace(dense=np.asarray(tensors.dense_cp(jnp.asarray(t.coeffs), jnp.asarray(t.factors), order)))


def sq_norm(t: tensors.Target, order: int, dtype) -> np.ndarray:
  """||T*||^2 in the run dtype, computed by the library's own function (as overparam.fit does)."""
  return np.asarray(tensors.target_sq_norm(jax.tree.map(jnp.asarray, t), order), dtype)

