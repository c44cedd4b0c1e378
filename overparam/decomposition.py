"""decompose / decompose_many: symmetric tensors in memory, on the functional core (overparam.fit).

  res = overparam.decompose(t, 6)                                  # t: a symmetric (d,)*l array
  res = overparam.decompose(overparam.CPTensor(c, a, 3), 6)        # the implicit loss
  res.coeffs, res.factors, res.rel_error, res.status, res.steps
  many = overparam.decompose_many(stack, 6, restarts=4)          # stack (n, d, ..., d): one program

No file, no workdir, no matplotlib: one compiled program per (algorithm structure, shapes), cached,
so a second call with the same shapes runs that program directly. Restart i of a decomposition is
overparam.fit(algorithm, PRNGKey(seed + i), ...) (the engine's seed seed + i); the restart with the
smallest float64 rel_error is kept.
"""

import dataclasses
import difflib
import itertools
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from overparam import checks, compile_cache, core, fitting, inputs, metrics, objectives, registry, tensors
from overparam import reduce as reduce_module
from overparam.errors import ArgumentError, ConfigError, TargetError

OPTIONS = ('steps', 'eps', 'seed', 'restarts', 'x64', 'plateau', 'compilation_cache')


@dataclasses.dataclass(frozen=True, repr=False)
class Decomposition:
  """The result of decompose().

  coeffs (m,), factors (m, d): the learned T = sum_i coeffs_i factors_i^{(x)l} (None for the lazy
    algorithms, whose model T(W0) + J dW is not a CP tensor: see `model`).
  model (d,)*l: the lazy algorithms' dense model (None for the CP algorithms).
  rel_error: ||T - T*||_F / ||T*||_F in float64 (None when diverged).
  status: converged (rel_error < eps), max_steps (the step budget ran out), unconfirmed (stopped by the
    run's float32 in-loop estimate, but rel_error >= eps: use x64=True), plateau (eps=None: stopped
    improving, the noise floor) or diverged.
  steps: updates performed. algorithm: its name; hyperparameters: the algorithm value that ran (its
  fields). width, order, seed (the restart kept), eps. extras: the algorithm's numbers (epochs,
  tangent_rank, linearization_gap, ...) and, for a CP input, the recovery metrics against it
  (recovered_fraction, max_cos, aligned_weight, active_components).
  target: the input as fitted (tensors.Target, host float64).
  """
  coeffs: Optional[np.ndarray]
  factors: Optional[np.ndarray]
  model: Optional[np.ndarray]
  rel_error: Optional[float]
  status: str
  steps: int
  algorithm: str
  hyperparameters: Any
  width: int
  order: int
  seed: int
  eps: Optional[float]
  extras: Dict[str, Any]
  target: tensors.Target

  def reduce(self, rank: Optional[int] = None, **options) -> 'Decomposition':
    """The rank-k decomposition this (wide) fit supports: prune components of negligible weight, merge
    components whose directions coincide (sign-aware), refit the weights by least squares and refine
    factors and weights at rank k to a stationary point of ||T - T*||^2 (overparam/reduce.py, `reduce`,
    which documents the rank rule, its options and when it fails).

    rank=None picks k: the smallest rank as good as this fit, made robust to a fit that also fitted
    noise (a dense target's noise test); rank=k forces k (an integer in [1, width]; ConfigError
    otherwise: never a padded answer). Returns a Decomposition of k components (unit factors) with
    its float64 rel_error against the input tensor; status converged iff rel_error < eps (else
    max_steps; with eps=None: plateau when the refinement reached a stationary point); steps: the refinement's iterations; extras: rank, rule, grad_norm, the refinement's
    status ('refine'), wide_rel_error, the refined rel_error of every rank scanned ('rel_errors').
    """
    if self.coeffs is None:
      raise ConfigError(f'reduce: the {self.algorithm} model is not a CP tensor (no coeffs and factors to reduce)')
    target = self.target.dense if self.target.dense is not None else (self.target.coeffs, self.target.factors)
    red = reduce_module.reduce(self.coeffs, self.factors, target, self.order, rank, **options)
    status = 'converged' if self.eps is not None and red.rel_error < self.eps else 'max_steps'
    if self.eps is None:
      status = 'plateau' if red.status == 'converged' else 'max_steps'
    extras = {'rank': red.rank, 'rule': red.rule, 'grad_norm': red.grad_norm, 'refine': red.status,
              'wide_rel_error': red.wide_rel_error, 'rel_errors': red.rel_errors}
    if self.target.factors is not None:
      extras.update(metrics.recovery(red.coeffs, red.factors, self.target.coeffs, self.target.factors, self.order))
    return dataclasses.replace(self, coeffs=red.coeffs, factors=red.factors, rel_error=float(red.rel_error),
                               status=status, steps=int(red.iterations), width=int(red.rank), extras=extras)

  def __repr__(self):
    shape = None if self.factors is None else self.factors.shape
    return (f'Decomposition(algorithm={self.algorithm!r}, width={self.width}, factors shape={shape}, '
            f'rel_error={self.rel_error}, status={self.status!r}, steps={self.steps})')


def _cp_input(tensor, order):
  """A CP target from a CPTensor, a tuple (coeffs, factors, order), or a tuple (coeffs, factors) with
  order= (only a tuple is a pair: a list or an array is a dense tensor). None for a dense input."""
  if isinstance(tensor, tensors.CPTensor):
    return tensor
  if isinstance(tensor, tuple) and len(tensor) == 3 and checks.is_int(tensor[2]):
    return tensors.CPTensor(*tensor)
  if isinstance(tensor, tuple) and len(tensor) == 2:
    if order is None:
      raise ArgumentError('order', 'given for a (coeffs, factors) tensor (or pass CPTensor(coeffs, factors, order))',
                          None)
    return tensors.CPTensor(tensor[0], tensor[1], order)
  return None


def _normalized_cp(t: tensors.CPTensor) -> tensors.CPTensor:
  """The same tensor with unit factors (coeffs_j ||a_j||^l, a_j / ||a_j||); TargetError for a zero row."""
  c, a = np.asarray(t.coeffs, np.float64), np.asarray(t.factors, np.float64)
  if c.ndim == 1 and a.ndim == 2 and c.shape[0] == a.shape[0]:
    norms = np.linalg.norm(a, axis=1)
    if np.any(norms == 0) or not np.any(c):
      raise TargetError('tensor: factors has zero rows or coeffs are all zero (T* must be a nonzero CP tensor '
                        'with a direction per component)')
    dtype = np.result_type(np.asarray(t.coeffs).dtype, np.asarray(t.factors).dtype)
    return tensors.CPTensor((c * norms ** t.order).astype(dtype), (a / norms[:, None]).astype(dtype), t.order)
  return t


def _target_input(tensor, order, dtype):
  """(the value fit takes, tensors.Target in float64 for the host's numbers) of one tensor."""
  cp = _cp_input(tensor, order)
  if cp is not None:
    inputs.as_target(cp)  # shapes, finiteness
    cp = _normalized_cp(cp)
    value = tensors.CPTensor(np.asarray(cp.coeffs, dtype), np.asarray(cp.factors, dtype), cp.order)
    host = tensors.Target(coeffs=np.asarray(cp.coeffs, np.float64), factors=np.asarray(cp.factors, np.float64))
    return value, host
  dense, _ = inputs.checked_dense(tensor, order)
  return dense.astype(dtype), tensors.Target(dense=dense)


def _run_dtype(x64):
  if x64 is True:
    jax.config.update('jax_enable_x64', True)  # process-wide (README: float64)
    return np.float64
  if x64 is None and jax.config.jax_enable_x64:
    return None  # the input's own float dtype
  return np.float32


_ALGORITHMS: Dict = {}  # (name, hyperparameters) -> (spec, algorithm value): values are frozen, reused


def _algorithm(name: str, hyperparameters: Mapping):
  """The algorithm value of `name` with the given hyperparameters: constructor argument names, their
  config-field spellings (dotted 'beyond_lazy.lr', top-level 'lr' for gd) or a nested dict
  (beyond_lazy={'lr': 0.1}); ConfigError naming an unknown one. Values built from hashable
  hyperparameters are cached (the same spec: a re-registered name builds anew)."""
  spec = registry.find(name)
  if spec is None:
    raise ConfigError(f'algorithm must be one of {", ".join(registry.names())}, got {name!r}')
  try:
    key = (name, _typed(tuple(sorted(hyperparameters.items()))))
    hash(key)
  except TypeError:  # a dict, list or array value (optimizer_kwargs, a nested dict): built every call
    key = None
  hit = _ALGORITHMS.get(key) if key is not None else None
  if hit is not None and hit[0] is spec:
    return hit[1]
  alg = _make_algorithm(spec, hyperparameters)
  if key is not None:
    if len(_ALGORITHMS) >= 256:
      _ALGORITHMS.clear()
    _ALGORITHMS[key] = (spec, alg)
  return alg


def _typed(x):
  """x with the type of every value beside it (1, 1.0 and True are equal keys, not equal arguments)."""
  if isinstance(x, tuple):
    return tuple(_typed(v) for v in x)
  return (type(x), x)


def _make_algorithm(spec, hyperparameters: Mapping):
  by_field = {f: a for a, f in spec.fields.items()}
  kwargs = {}
  for key, value in hyperparameters.items():
    if isinstance(value, Mapping) and not key.endswith('_kwargs'):
      for k, v in value.items():
        _put(kwargs, spec, by_field, f'{key}.{k}', v)
    else:
      _put(kwargs, spec, by_field, key, value)
  try:
    return spec.make(**kwargs)
  except ArgumentError:
    raise
  except TypeError as e:  # pragma: no cover - _put checks the names first
    raise ConfigError(str(e)) from None


def _put(kwargs, spec, by_field, key, value):
  if '.' in key and key.split('.', 1)[0].endswith('_kwargs'):  # optimizer_kwargs.b2 = ...
    head, sub = key.split('.', 1)
    kwargs.setdefault(head, {})[sub] = value
    return
  arg = key if key in spec.fields else by_field.get(key)
  if arg is None:
    known = sorted(set(spec.fields) | set(OPTIONS))
    close = difflib.get_close_matches(key.split('.')[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ''
    raise ConfigError(f'decompose(): unknown option {key!r} for algorithm {spec.name}{hint}; it takes '
                      f'{", ".join(known)}')
  kwargs[arg] = dict(value) if isinstance(value, Mapping) else value


def _options(steps, eps, seed, restarts):
  steps = checks.integer('steps', steps, 1, 2 ** 31 - 1)
  eps = inputs.eps(eps)
  seed = checks.integer('seed', seed, 0, 2 ** 32 - 1)
  restarts = checks.integer('restarts', restarts, 1, 2 ** 16)
  if seed + restarts - 1 > 2 ** 32 - 1:
    raise ArgumentError('restarts', f'at most {2 ** 32 - seed} with seed={seed} (uint32 keys)', restarts)
  return steps, eps, seed, restarts


def decompose(tensor, width: int, *, order: Optional[int] = None, algorithm: str = 'beyond_lazy',
              steps: int = core.DEFAULT_STEPS, eps=core.DEFAULT_EPS, seed: int = 0, restarts: int = 1,
              x64: Optional[bool] = None, plateau=None, compilation_cache: bool = True,
              **hyperparameters) -> Decomposition:
  """Fits a width-`width` model to one symmetric tensor with `algorithm`; returns a Decomposition.

  tensor: a symmetric array of shape (d,)*l (numpy, JAX or nested lists; its order is its ndim), or a
    CPTensor(coeffs (r,), factors (r, d), order) / a tuple (coeffs, factors) with order= (the implicit
    loss: T* is never formed densely).
  width: the number of components m >= 1. algorithm: beyond_lazy (default), gd, lazy, lazy_exact, or
    any registered name.
  steps: the step budget (default 2000). eps: stop at rel_error < eps (default 0.05); None: train to
    the noise floor (the plateau rule of overparam.fit; `plateau` = (window, rel_tol)).
  seed, restarts: restart i runs from PRNGKey(seed + i); the one with the smallest rel_error is kept
    (restarts are one vmapped program).
  x64: True turns on jax_enable_x64 (process-wide) and runs in float64; False float32; None (default)
    float32, or the input's float64 when jax_enable_x64 is already on.
  compilation_cache: JAX's persistent compilation cache (overparam/compile_cache.py), process-wide.
  hyperparameters: the algorithm's constructor arguments (overparam.beyond_lazy(lr=...), ...), also
    spelled as its config fields (beyond_lazy={'lr': 0.1}, **{'beyond_lazy.lr': 0.1}).

  Raises ConfigError / ArgumentError (an option or hyperparameter out of range, an unknown option or
  algorithm, a program larger than the free memory) or TargetError (a tensor that is not a finite
  symmetric (d,)*l array or CP tensor), before anything is compiled.
  """
  return decompose_many([tensor], width, order=order, algorithm=algorithm, steps=steps, eps=eps, seed=seed,
                        restarts=restarts, x64=x64, plateau=plateau, compilation_cache=compilation_cache,
                        **hyperparameters)[0]


def _as_batch(tensors_in, order):
  """The tensors of decompose_many as a list."""
  if isinstance(tensors_in, tensors.CPTensor):
    c, a = np.asarray(tensors_in.coeffs), np.asarray(tensors_in.factors)
    if c.ndim == 2 and a.ndim == 3:  # a CPTensor with a batch axis
      return [tensors.CPTensor(c[i], a[i], tensors_in.order) for i in range(c.shape[0])]
    return [tensors_in]
  if isinstance(tensors_in, (np.ndarray, jax.Array)):
    return list(tensors_in)
  if isinstance(tensors_in, (list, tuple)) and tensors_in:
    return list(tensors_in)
  raise TargetError('tensors must be a non-empty list of tensors, a stacked array (n, d, ..., d), or a CPTensor '
                    'with a batch axis')


def decompose_many(tensors_in, width: int, *, order: Optional[int] = None, algorithm: str = 'beyond_lazy',
                   steps: int = core.DEFAULT_STEPS, eps=core.DEFAULT_EPS, seed: int = 0, restarts: int = 1,
                   x64: Optional[bool] = None, plateau=None, compilation_cache: bool = True,
                   **hyperparameters) -> List[Decomposition]:
  """decompose() of every tensor of a batch of same-shape tensors in ONE compiled program (vmapped over
  the tensors and over the restarts); returns a list of Decomposition, one per tensor, in order.

  tensors_in: a stacked array (n, d, ..., d), a list of same-shape symmetric arrays, a list of CPTensors
  of one shape, or a CPTensor whose coeffs (n, r) and factors (n, r, d) carry the batch axis. Options as
  decompose(). TargetError naming the tensor (by index) that is not valid, or when shapes differ.
  """
  batch = _as_batch(tensors_in, order)
  width = inputs.width(width)
  steps, eps, seed, restarts = _options(steps, eps, seed, restarts)
  if not isinstance(algorithm, str):
    raise ConfigError(f'algorithm must be a name ({", ".join(registry.names())}), got {algorithm!r}')
  alg = _algorithm(algorithm, hyperparameters)
  compile_cache.configure(compilation_cache)
  dtype = _run_dtype(x64)
  fast = _dense_batch(batch, order, dtype)
  if fast is not None:
    stacked, hosts = fast
    first = stacked[0]
  else:
    values, hosts = [], []
    for i, t in enumerate(batch):
      try:
        value, host = _target_input(t, order, dtype or _input_dtype(t, order))
      except TargetError as e:
        raise TargetError(str(e).replace('target', 'tensor' if len(batch) == 1 else f'tensor {i}', 1)) from None
      values.append(value)
      hosts.append(host)
    shapes = {tuple(np.shape(v.factors if isinstance(v, tensors.CPTensor) else v)) for v in values}
    if len(shapes) > 1:
      raise TargetError(f'tensors must all have one shape (one compiled program), got shapes {sorted(shapes)}')
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *values)
    first = values[0]
  # the checked inputs' task and run dtype (fitting.prepare without checking the targets again)
  if isinstance(first, tensors.CPTensor):
    task = fitting.make_task(first.order, 'implicit', steps, eps, plateau)
    run = inputs.run_dtype(np.result_type(first.coeffs.dtype, first.factors.dtype))
    stacked_target = tensors.Target(coeffs=stacked.coeffs, factors=stacked.factors)
  else:
    task = fitting.make_task(first.ndim, 'dense', steps, eps, plateau)
    run = inputs.run_dtype(first.dtype)
    stacked_target = tensors.Target(dense=stacked)
  alg_run = core.as_leaves(alg, run)
  keys = seed_keys(seed, restarts)
  exe = fitting.executable(alg_run, task, width, keys, stacked_target, eps, kind='batched')
  # to the host: what the results read (not the parameters, nor the in-loop dtype's rel_error)
  out = jax.device_get(exe(alg_run, keys, stacked_target, eps)._replace(params=None, params0=None, rel_error=None))
  return [_result(out, i, hosts[i], algorithm, alg, width, task.order, seed, eps) for i in range(len(batch))]


def _dense_batch(batch, order, dtype):
  """(stacked values (n, d, ..., d) in the run dtype, host targets) of a batch of dense float32/float64
  arrays of one dtype and one shape (d,)*l that are all finite, non-zero and exactly symmetric,
  checked in one pass; None for any other batch (then each tensor is checked alone, as
  inputs.checked_dense does, which names the first bad one and projects a nearly symmetric one). The
  numbers are those of the per-tensor path: its float64 copy, cast to the run dtype."""
  if not all(isinstance(t, (np.ndarray, jax.Array)) for t in batch):
    return None
  shape, kind = batch[0].shape, np.dtype(batch[0].dtype)
  if kind not in (np.float32, np.float64) or any(t.shape != shape or np.dtype(t.dtype) != kind for t in batch):
    return None
  if len(shape) < 2 or len(set(shape)) != 1 or shape[0] < 1 or (order is not None and order != len(shape)):
    return None
  a64 = np.asarray(np.stack([np.asarray(t) for t in batch]), np.float64)
  flat = a64.reshape(len(batch), -1)
  if not np.all(np.isfinite(flat)) or not np.all(np.max(np.abs(flat), axis=1) > 0):
    return None
  for perm in itertools.permutations(range(1, len(shape) + 1)):
    if not np.array_equal(a64, a64.transpose((0,) + perm)):
      return None
  run = dtype or _input_dtype(batch[0], order)
  return a64.astype(run), [tensors.Target(dense=a64[i]) for i in range(len(batch))]


def seed_keys(seed: int, n: int) -> np.ndarray:
  """(n, 2) uint32: the raw jax.random.PRNGKey(seed + i) (threefry2x32: [0, seed + i] for seeds below
  2^32), built on the host without dispatching n device computations (tests check the equality)."""
  if jax.config.jax_default_prng_impl != 'threefry2x32':
    return np.stack([np.asarray(jax.random.PRNGKey(seed + i)) for i in range(n)])
  return np.stack([np.zeros(n, np.uint32), np.arange(seed, seed + n, dtype=np.uint64).astype(np.uint32)], axis=1)


def _input_dtype(t, order):
  cp = _cp_input(t, order)
  try:
    d = np.asarray(cp.factors if cp is not None else t).dtype
  except (ValueError, TypeError):  # ragged: refused by the target checks
    return np.float32
  return d if d in (np.float32, np.float64) else np.float32


def _result(out: fitting.FitResult, i: int, host: tensors.Target, name: str, alg, width: int, order: int, seed: int,
            eps) -> Decomposition:
  """The Decomposition of tensor i: its best restart by float64 rel_error."""
  rels = []
  for k in range(out.steps.shape[1]):
    rels.append(_rel_f64(out, i, k, host, order))
  finite = [r for r in rels if r is not None]
  k = rels.index(min(finite)) if finite else 0
  rel = rels[k]
  pick = lambda x: None if x is None else np.asarray(x[i, k])
  status = core.STATUS_NAMES[int(core.final_status(int(out.status[i, k]) if rel is None else _in_loop(out, i, k),
                                                   np.nan if rel is None else rel,
                                                   0.0 if eps is None else eps, np))]
  extras = {key: _plain(v[i, k]) for key, v in out.extras.items()}
  coeffs, factors = pick(out.coeffs), pick(out.factors)
  if coeffs is not None and rel is not None and host.factors is not None:
    extras.update(metrics.recovery(coeffs, factors, host.coeffs, host.factors, order))
  return Decomposition(coeffs=coeffs, factors=factors, model=pick(out.model), rel_error=rel, status=status,
                       steps=int(out.steps[i, k]), algorithm=name, hyperparameters=alg, width=width, order=order,
                       seed=seed + k, eps=eps, extras=extras, target=host)


def _in_loop(out, i, k) -> int:
  """The in-loop verdict behind fit's status: converged (by the in-loop test), plateau, or neither."""
  code = int(out.status[i, k])
  return {core.UNCONFIRMED: core.CONVERGED}.get(code, code)


def _rel_f64(out, i, k, host, order) -> Optional[float]:
  if out.coeffs is not None:
    c, v = np.asarray(out.coeffs[i, k], np.float64), np.asarray(out.factors[i, k], np.float64)
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(v))) or int(out.status[i, k]) == core.DIVERGED:
      return None
    return float(objectives.rel_error_f64(c, v, host, order))
  model = np.asarray(out.model[i, k], np.float64)
  if not np.all(np.isfinite(model)):
    return None
  t_star = host.dense if host.dense is not None else objectives.np_dense(host.coeffs, host.factors, order)
  return float(np.linalg.norm(model - t_star) / np.linalg.norm(t_star))


def _plain(x):
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.integer):
    return int(x)
  return float(x) if x.ndim == 0 else x
