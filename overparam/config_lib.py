"""The config contract (DESIGN.md section 6): defaults every experiment starts from, and validation.

Validation runs before any computation and raises ConfigError with a one-line message that names
the field and the accepted range; the launcher prints it as `error: ...`.
"""

import math
import numbers

import ml_collections

from overparam import algorithms, objectives, tensors
from overparam.errors import ConfigError

ALGORITHMS = ('gd',)
LOSSES = ('auto',) + objectives.LOSSES
SIGNS = ('positive', 'balanced')


def base_config() -> ml_collections.ConfigDict:
  """Every field the launcher understands, with neutral defaults; configs override what they need."""
  c = ml_collections.ConfigDict()
  c.algorithms = ('gd',)
  c.order = 3
  c.dims = (10,)
  c.rank = 3
  c.widths = (3, 6, 12)
  c.num_seeds = 4
  c.seed = 0
  c.target = ml_collections.ConfigDict(
      dict(kind='random_unit', weights=(), noise=0.0, coherence=0.0, path=''))
  c.parametrization = 'cp'
  c.signs = 'positive'
  c.loss = 'auto'
  c.steps = 2000
  c.lr = 0.05
  c.optimizer = 'sgd'
  c.init_scale = 0.3
  c.reg = 0.0
  c.alpha = 1.0
  c.eps = 0.05
  c.save_params = True
  c.x64 = False
  c.chunk_steps = 250
  c.trace_every = 0  # > 0: save each run's trajectory every this many steps (divides chunk_steps)
  c.checkpoint_every_s = 60.0
  c.distributed = False
  # Lazy (NTK) regime: `lazy` (GD on the jax.linearize model) and `lazy_exact` (the projection).
  c.lazy = ml_collections.ConfigDict(dict(symmetric_init=False, ntk_scaling=False))
  # The paper's beyond-lazy variant of GD (2-homogeneous, small init, reinit, epochs).
  c.beyond_lazy = ml_collections.ConfigDict(dict(
      init_scale=1e-2, reinit_threshold=1e-3, epoch_length=200, epoch_growth=1.5, reg=1e-4))
  return c


def _is_int(x):
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _positive_ints(name, xs):
  if not isinstance(xs, (tuple, list)) or not xs or not all(_is_int(x) and x >= 1 for x in xs):
    raise ConfigError(f'config.{name} must be a non-empty tuple of integers >= 1, got {xs!r}')


def _finite(name, x, lo=None, lo_open=False, hi=None, hi_open=False):
  if not isinstance(x, numbers.Real) or isinstance(x, bool) or not math.isfinite(x):
    raise ConfigError(f'config.{name} must be a finite number, got {x!r}')
  if lo is not None and (x < lo or (lo_open and x == lo)):
    rng = f'{"> " if lo_open else ">= "}{lo}'
    raise ConfigError(f'config.{name} must be {rng}, got {x!r}')
  if hi is not None and (x > hi or (hi_open and x == hi)):
    rng = f'{"< " if hi_open else "<= "}{hi}'
    raise ConfigError(f'config.{name} must be {rng}, got {x!r}')


def _choice(name, x, allowed):
  if x not in allowed:
    raise ConfigError(f'config.{name} must be one of {", ".join(allowed)}, got {x!r}')


def validate(c: ml_collections.ConfigDict):
  """Raises ConfigError for the first field out of range."""
  algs = c.algorithms
  if not isinstance(algs, (tuple, list)) or not algs:
    raise ConfigError(f'config.algorithms must be a non-empty tuple from {ALGORITHMS}, got {algs!r}')
  for a in algs:
    _choice('algorithms', a, ALGORITHMS)
  if len(set(algs)) != len(algs):
    raise ConfigError(f'config.algorithms has duplicates: {algs!r}')
  if not _is_int(c.order) or c.order < 2:
    raise ConfigError(f'config.order must be an integer >= 2, got {c.order!r}')
  _positive_ints('dims', c.dims)
  _positive_ints('widths', c.widths)
  for name in ('rank', 'num_seeds', 'steps', 'chunk_steps'):
    if not _is_int(c[name]) or c[name] < 1:
      raise ConfigError(f'config.{name} must be an integer >= 1, got {c[name]!r}')
  if not _is_int(c.trace_every) or c.trace_every < 0 or (c.trace_every and chunk_of(c) % c.trace_every):
    raise ConfigError(f'config.trace_every must be 0 or a divisor of min(chunk_steps, steps)={chunk_of(c)}, '
                      f'got {c.trace_every!r}')
  if not _is_int(c.seed) or c.seed < 0:
    raise ConfigError(f'config.seed must be an integer >= 0, got {c.seed!r}')
  t = c.target
  _choice('target.kind', t.kind, tensors.TARGET_KINDS)
  if t.kind == 'orthonormal' and c.rank > min(c.dims):
    raise ConfigError(f'config.rank must be <= min(config.dims)={min(c.dims)} for orthonormal targets, got {c.rank}')
  if t.kind == 'coherent':
    _finite('target.coherence', t.coherence, 0.0, False, 1.0, True)
    if c.rank + 1 > min(c.dims):
      raise ConfigError(f'config.rank must be <= min(config.dims) - 1 = {min(c.dims) - 1} for coherent '
                        f'targets, got {c.rank}')
  if t.weights:
    if len(t.weights) != c.rank:
      raise ConfigError(f'config.target.weights must have length config.rank={c.rank}, got {len(t.weights)}')
    for w in t.weights:
      _finite('target.weights', w)
  _finite('target.noise', t.noise, 0.0)
  _choice('parametrization', c.parametrization, objectives.PARAMETRIZATIONS)
  _choice('signs', c.signs, SIGNS)
  _choice('loss', c.loss, LOSSES)
  if c.loss == 'implicit' and (t.kind == 'file' or t.noise > 0):
    raise ConfigError('config.loss=implicit needs a factored target (target.kind != file, target.noise = 0); '
                      'use loss=dense or auto')
  _choice('optimizer', c.optimizer, algorithms.OPTIMIZERS)
  _finite('lr', c.lr, 0.0, True)
  _finite('eps', c.eps, 0.0, True)
  _finite('init_scale', c.init_scale, 0.0, True)
  _finite('reg', c.reg, 0.0)
  _finite('alpha', c.alpha, 0.0, True)
  _finite('checkpoint_every_s', c.checkpoint_every_s, 0.0)


def chunk_of(c: ml_collections.ConfigDict) -> int:
  """Steps per compiled chunk."""
  return min(c.chunk_steps, c.steps)


def resolve_loss(c: ml_collections.ConfigDict) -> str:
  """'auto' -> implicit when the target is factored (no file, no noise), else dense."""
  if c.loss != 'auto':
    return c.loss
  return 'dense' if (c.target.kind == 'file' or c.target.noise > 0) else 'implicit'
