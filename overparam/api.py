"""The Python API: decompose one tensor, or run a sweep, through the engine that launch.py runs.

  import overparam
  res = overparam.decompose(t, 6)                           # t: a symmetric (d,)*l array
  res = overparam.decompose((coeffs, factors), 6, order=3)  # T = sum_j coeffs_j factors_j^{(x)3}
  res.coeffs, res.factors, res.rel_error, res.status, res.steps, res.config
  summary = overparam.run('configs/default.py:quick', 'workdirs/quick')

decompose() is a sweep of one cell: the tensor goes to a temporary target file (config.target.kind =
'file', a .npy dense or a .npz CP target, so a CP input is never formed densely), experiments.run
runs it into a temporary workdir with the launcher's validation and user errors, and the result is
read back from the row and params/*.npz before the directory is removed. run() is
experiments.run after the launcher's process set-up (float64, compilation cache).

Both raise overparam.errors.ConfigError / TargetError / WorkdirError for the user's input, as the
launcher does (there they are one `error:` line); anything else is a bug.

float64: `x64=True` (decompose) or config.x64 (run) turns on `jax_enable_x64` for the whole process,
as the launcher does. JAX reads that switch when it creates arrays: arrays made before it was
turned on stay float32, and it is never turned off again here. Set it first thing in a notebook
(`jax.config.update('jax_enable_x64', True)`) when you mix your own JAX arrays with x64 runs.
"""

import dataclasses
import difflib
import importlib.util
import json
import numbers
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Union

import ml_collections
import numpy as np

from overparam import compile_cache, inputs
from overparam.errors import ConfigError, TargetError

# Fields decompose() sets from its arguments; overriding them is a ConfigError.
_FIXED = ('algorithms', 'order', 'dims', 'rank', 'ranks', 'axes', 'widths', 'algorithm_widths', 'num_seeds',
          'target', 'alphas', 'save_params', 'trace_every', 'distributed')


@dataclasses.dataclass(frozen=True, repr=False)
class Decomposition:
  """The result of decompose().

  coeffs (m,), factors (m, d): the learned T = sum_i coeffs_i factors_i^{(x)l} (None for the lazy
  algorithms, whose model T(W0) + J dW is not a CP tensor, and for a diverged run).
  rel_error: ||T - T*||_F / ||T*||_F in float64 (None when diverged). status: converged, max_steps
  or diverged. steps: updates performed. config: the resolved config of the run (frozen).
  row: the whole results row (movement, recovery metrics, the algorithm's extras).
  """
  coeffs: Optional[np.ndarray]
  factors: Optional[np.ndarray]
  rel_error: Optional[float]
  status: str
  steps: int
  config: ml_collections.FrozenConfigDict
  row: Dict[str, Any]

  def __repr__(self):
    shape = None if self.factors is None else self.factors.shape
    return (f'Decomposition(algorithm={self.row["algorithm"]!r}, width={self.row["width"]}, '
            f'factors shape={shape}, rel_error={self.rel_error}, status={self.status!r}, steps={self.steps})')


def decompose(tensor, width: int, *, order: Optional[int] = None, algorithm: str = 'beyond_lazy',
              compilation_cache: bool = True, **config_overrides) -> Decomposition:
  """Fits a width-`width` model to one symmetric tensor with `algorithm`; returns a Decomposition.

  tensor: a symmetric array of shape (d,)*l (numpy or JAX; its order is its ndim), or a pair
    (coeffs (r,), factors (r, d)) meaning T* = sum_j coeffs_j factors_j^{(x)order} (order required;
    the implicit loss is used and T* is never formed densely).
  width: the number of components m >= 1. algorithm: gd, beyond_lazy, lazy or lazy_exact.
  config_overrides: any other config field (overparam/config_lib.py, base_config), e.g.
    steps=5000, eps=1e-3, x64=True, seed=1; nested fields either as a dict
    (beyond_lazy={'lr': 0.1}) or with a dotted key (**{'beyond_lazy.lr': 0.1}). The fields set by
    the arguments (dims, widths, order, target, ...) cannot be overridden.
  compilation_cache: the persistent compilation cache (overparam/compile_cache.py), process-wide.

  Raises ConfigError (a field or argument out of range, an unknown field or algorithm) or
  TargetError (a tensor that is not a finite symmetric (d,)*l array or CP pair).
  """
  from overparam import config_lib  # noqa: PLC0415 - imports jax
  if not _is_int(width) or width < 1:
    raise ConfigError(f'width must be an integer >= 1, got {width!r}')
  if order is not None and (not _is_int(order) or order < 2):
    raise ConfigError(f'order must be an integer >= 2, got {order!r}')
  if not isinstance(algorithm, str):
    raise ConfigError(f'algorithm must be a name (config.algorithms), got {algorithm!r}')
  cp = _cp_pair(tensor)
  if cp is not None:
    if order is None:
      raise ConfigError('order is required for a (coeffs, factors) tensor')
    dim, rank = cp[1].shape[1], cp[1].shape[0]
  else:
    dense = _dense_array(tensor)
    if order is not None and order != dense.ndim:
      raise TargetError(f'tensor: array has order (ndim) {dense.ndim}, order is {order}')
    order, dim, rank = dense.ndim, dense.shape[0], None
  c = config_lib.base_config()
  c.algorithms = (algorithm,)
  c.order, c.dims, c.widths, c.num_seeds = int(order), (int(dim),), (int(width),), 1
  if rank is not None:
    c.rank = int(rank)
  c.save_params = True
  c.checkpoint_every_s = 1e9  # one temporary run: no mid-run checkpoints
  for key, value in config_overrides.items():
    if key.split('.')[0] in _FIXED:
      raise ConfigError(f'config.{key} is set by decompose() from its arguments; use overparam.run for sweeps')
    _override(c, key.split('.'), value, key)
  with tempfile.TemporaryDirectory(prefix='overparam-decompose-') as tmp:
    c.target.kind = 'file'
    if cp is not None:
      c.target.path = os.path.join(tmp, 'target.npz')
      np.savez(c.target.path, coeffs=cp[0], factors=cp[1])
    else:
      c.target.path = os.path.join(tmp, 'target.npy')
      np.save(c.target.path, dense)
    workdir = os.path.join(tmp, 'workdir')
    try:
      run(c, workdir, compilation_cache=compilation_cache, figures=False)
    except TargetError as e:  # name the argument, not the temporary file
      msg = str(e).replace(repr(c.target.path), 'the tensor').replace('config.target.path', 'tensor')
      raise TargetError(msg) from None
    with open(os.path.join(workdir, 'results.jsonl')) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    if len(rows) != 1:  # a cell axis slipped in through an override
      raise ConfigError(f'decompose() runs one cell; the overrides made {len(rows)}: use overparam.run')
    row = rows[0]
    coeffs = factors = None
    if row.get('params_file'):
      with np.load(os.path.join(workdir, row['params_file'])) as z:
        coeffs, factors = z['coeffs'], z['factors']
  c.target.path = ''  # the temporary file is gone
  return Decomposition(coeffs=coeffs, factors=factors, rel_error=row['rel_error'], status=row['status'],
                       steps=row['steps'], config=ml_collections.FrozenConfigDict(c), row=row)


def run(config: Union[ml_collections.ConfigDict, str], workdir: str, *,
        compilation_cache: bool = True, figures: bool = True) -> Dict:
  """Runs (or resumes) the sweep `config` into `workdir` as `launch.py --config=... --workdir=...`
  does (single process); returns the summary (the contents of summary.json).

  config: a ConfigDict (e.g. from load_config) or a config file spec 'configs/X.py[:variant]'.
  compilation_cache: the persistent compilation cache (overparam/compile_cache.py), process-wide.
  figures: False skips drawing WORKDIR/figures/ (`launch.py --plot_only` draws them later).
  Raises ConfigError, TargetError or WorkdirError as the launcher would report them.
  """
  if isinstance(config, str):
    config = load_config(config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'config must be an ml_collections.ConfigDict or a config file path, got '
                      f'{type(config).__name__}')
  if config.get('distributed'):
    raise ConfigError('config.distributed: multi-process runs start from launch.py (one process per host)')
  from overparam import config_lib  # noqa: PLC0415 - imports jax
  config_lib.validate(config)  # as launch.py: before jax is configured, before anything is written
  import jax  # noqa: PLC0415
  compile_cache.configure(compilation_cache)
  if config.get('x64'):
    jax.config.update('jax_enable_x64', True)  # process-wide; see the module docstring
  from overparam import experiments  # noqa: PLC0415
  return experiments.run(config, workdir, figures=figures)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of a config file, as `--config=spec` gives it: 'path.py' calls its get_config(),
  'path.py:arg' calls get_config('arg') (e.g. 'configs/default.py:quick'). ConfigError if the file
  is missing or its get_config fails."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'config: no such config file {path!r}')
  try:
    module_spec = importlib.util.spec_from_file_location('overparam_config_file', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - a broken config file is the user's to fix, as in launch.py
    raise ConfigError(f'config: cannot load {spec!r} ({type(e).__name__}: {e})') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'config: {spec!r} get_config() returned {type(config).__name__}, not a ConfigDict')
  return config


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _cp_pair(tensor):
  """(coeffs (r,), factors (r, d)) as numpy arrays if `tensor` is a pair, else None.

  [reliab] A pair is a tuple or list of two items of which the first is 1-d and the second 2-d; any other
  sequence (a 2x2 nested list, two rows of a matrix) is a dense array."""
  if not isinstance(tensor, (tuple, list)) or len(tensor) != 2:
    return None
  try:
    if (np.ndim(tensor[0]), np.ndim(tensor[1])) != (1, 2):
      return None
  except ValueError:  # a ragged item: not a pair (_dense_array names it)
    return None
  try:
    coeffs, factors = np.asarray(tensor[0]), np.asarray(tensor[1])
  except Exception:  # noqa: BLE001 - ragged or non-numeric input
    raise TargetError('tensor: a (coeffs, factors) pair must hold two numeric arrays') from None
  for name, x in (('coeffs', coeffs), ('factors', factors)):
    problem = inputs.dtype_problem(x.dtype)  # [reliab] bfloat16 named as such, not '|V2'
    if problem:
      raise TargetError(f'tensor: {name}: {problem}')
  if coeffs.ndim != 1 or factors.ndim != 2 or factors.shape[0] != coeffs.shape[0] or not coeffs.size:
    raise TargetError(f'tensor: a (coeffs, factors) pair must have shapes (r,) and (r, d) with r >= 1, got '
                      f'{coeffs.shape} and {factors.shape}')
  return coeffs, factors


def _dense_array(tensor) -> np.ndarray:
  try:
    arr = np.asarray(tensor)
  except Exception:  # noqa: BLE001
    raise TargetError(f'tensor must be a numeric array or a (coeffs, factors) pair, got {type(tensor).__name__}') from None
  problem = inputs.dtype_problem(arr.dtype)  # [reliab] bfloat16 named as such, not '|V2'
  if problem:
    raise TargetError(f'tensor: {problem}')
  if arr.ndim < 2:
    raise TargetError(f'tensor must be a symmetric array of shape (d,)*l with l >= 2, got shape {arr.shape}')
  return arr


def _override(node: ml_collections.ConfigDict, path, value, full: str, free: bool = False):
  """Sets config field `path` (a list of names) of `node` to `value`; a dict value for a nested
  config sets its fields one by one. A `*_kwargs` field (the optimizer's or schedule's own
  arguments) takes any keys and a dict replaces it whole, as the launcher's
  --config.optimizer_kwargs='{...}' does. ConfigError for an unknown field or a value of the wrong type."""
  name = path[0]
  kwargs = str(name).endswith('_kwargs')
  if len(path) == 1 and kwargs and isinstance(value, Mapping):
    node[name] = dict(value)
    return
  if name not in node and not free:
    close = difflib.get_close_matches(name, list(node.keys()), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ConfigError(f'config has no field {full!r}{hint}')
  if len(path) > 1:
    if not isinstance(node.get(name), ml_collections.ConfigDict):
      raise ConfigError(f'config has no field {full!r} (config.{name} has no sub-fields)')
    return _override(node[name], path[1:], value, full, free=kwargs)
  if isinstance(node.get(name), ml_collections.ConfigDict):
    if not isinstance(value, Mapping):
      raise ConfigError(f'config.{full} takes a dict of its fields, got {value!r}')
    for k, v in value.items():
      _override(node[name], [k], v, f'{full}.{k}')
    return
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(node.get(name), tuple) and isinstance(value, (list, np.ndarray)):
    value = tuple(np.asarray(value).tolist())
  try:
    node[name] = value
  except TypeError as e:
    raise ConfigError(f'config.{full}: {value!r} has the wrong type ({e})') from None
