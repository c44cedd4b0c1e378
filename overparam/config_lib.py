"""The config contract (DESIGN.md section 6): defaults every experiment starts from, and validation.

Validation runs before any computation and raises ConfigError with a one-line message that names
the field and the accepted range; the launcher prints it as `error: ...`.
"""

import math
import numbers

import ml_collections

from overparam import algorithms, objectives, tensors
from overparam.errors import ConfigError

ALGORITHMS = ('gd', 'beyond_lazy', 'lazy', 'lazy_exact')
LOSSES = ('auto',) + objectives.LOSSES
SIGNS = ('positive', 'balanced')


# Defaults of config.beyond_lazy (how they were chosen: README.md, section "Beyond lazy").
BEYOND_LAZY_DEFAULTS = dict(lr=0.2, init_scale=1e-3, reinit_threshold=1e-2, epoch_length=100,
                            epoch_growth=1.5, reg=1e-4)


def base_config() -> ml_collections.ConfigDict:
  """Every field the launcher understands, with neutral defaults; configs override what they need."""
  c = ml_collections.ConfigDict()
  c.algorithms = ('gd',)
  c.order = 3
  c.dims = (10,)
  c.rank = 3
  c.ranks = ()  # a sweep over r: one cell per value (rows carry rank; m* is fitted against r); () = (rank,)
  c.widths = (3, 6, 12)
  # Per-algorithm width grids; () = config.widths. The algorithms of one config share targets, seeds
  # and T*, but the lazy arms need m ~ d^{l-1} while gd and beyond_lazy need a few times r.
  c.algorithm_widths = ml_collections.ConfigDict({a: () for a in ALGORITHMS})
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
  c.alphas = ()  # a sweep over alpha for gd: one cell per value (rows carry alpha); () = (alpha,)
  c.eps = 0.05
  c.save_params = True
  c.x64 = False
  c.chunk_steps = 250
  c.trace_every = 0  # > 0: save each run's trajectory every this many steps (divides chunk_steps)
  c.checkpoint_every_s = 60.0
  c.distributed = False
  c.memory_gb = 0.0  # memory one device may use (0: detect); every program is checked against it
  # Lazy (NTK) regime: `lazy` (GD on the jax.linearize model) and `lazy_exact` (the projection).
  # symmetric_init: doubled +/- init, T(W0) = 0; ntk_scaling: T = (1/sqrt(m)) sum_i ...; `lazy` steps
  # lr_scale / lambda_max(J^T J) (power_iters iterations of power iteration), with optax sgd
  # momentum `momentum` (0: plain GD). See overparam/lazy.py.
  c.lazy = ml_collections.ConfigDict(dict(symmetric_init=False, ntk_scaling=False, lr_scale=1.0,
                                          momentum=0.0, power_iters=100))
  # The paper's beyond-lazy variant of GD (overparam/beyond_lazy.py): 2-homogeneous, small init,
  # re-initialization of small components at epoch starts, growing epochs. It trains on
  # T* / ||T*||_F, so these are dimensionless; lr is its own step size (config.lr is plain gd's).
  c.beyond_lazy = ml_collections.ConfigDict(BEYOND_LAZY_DEFAULTS)
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


INT32_MAX = 2 ** 31 - 1
UINT32_MAX = 2 ** 32 - 1  # seeds are uint32 PRNG keys: a larger seed would alias a smaller one

# The accepted range of every base field (README quotes this table). Algorithm sub-configs
# (config.beyond_lazy, config.lazy) are validated by their own validators below.
BASE_FIELD_RANGES = {
    'algorithms': f'non-empty tuple of distinct names from {", ".join(ALGORITHMS)}',
    'order': 'integer >= 2',
    'dims': 'non-empty tuple of distinct integers >= 1',
    'rank': 'integer >= 1 (equal to len(target.weights) when weights are set)',
    'ranks': 'tuple of distinct integers >= 1; () = (rank,); empty with target.weights or target.kind=file',
    'widths': 'non-empty tuple of distinct integers >= 1',
    'algorithm_widths.NAME': '() or a tuple of distinct integers >= 1 (the grid of NAME when it runs)',
    'num_seeds': f'integer >= 1, with seed + num_seeds - 1 <= {UINT32_MAX}',
    'seed': f'integer in [0, {UINT32_MAX}] (uint32 PRNG keys)',
    'target.kind': ', '.join(tensors.TARGET_KINDS),
    'target.weights': '() or rank finite numbers, not all 0; only for target.kind != file',
    'target.noise': 'finite number >= 0',
    'target.coherence': 'number in [0, 1); set only for target.kind=coherent',
    'target.path': "a .npy or .npz file; set only for target.kind=file ('' otherwise)",
    'parametrization': ', '.join(objectives.PARAMETRIZATIONS) + '; unused (keep the default) with only beyond_lazy',
    'signs': ', '.join(SIGNS),
    'loss': ', '.join(LOSSES) + '; implicit needs a factored target',
    'steps': f'integer in [1, {INT32_MAX}]',
    'lr': 'finite number > 0; used by gd only',
    'optimizer': ', '.join(algorithms.OPTIMIZERS) + '; used by gd and beyond_lazy',
    'init_scale': 'finite number > 0; used by gd, lazy, lazy_exact',
    'reg': 'finite number >= 0; used by gd only',
    'alpha': 'finite number > 0; used by gd only',
    'alphas': 'tuple of distinct finite numbers > 0; () = (alpha,); used by gd only',
    'eps': 'number in (0, 1)',
    'save_params': 'True or False',
    'x64': 'True or False',
    'chunk_steps': f'integer in [1, {INT32_MAX}]',
    'trace_every': '0 or a divisor of min(chunk_steps, steps)',
    'checkpoint_every_s': 'finite number >= 0 (0: after every chunk)',
    'distributed': 'True or False (needs --coordinator_address, --num_processes, --process_id outside Slurm/TPU)',
    'memory_gb': 'finite number >= 0 (0: detect)',
}


def _distinct(name, xs):
  if len(set(xs)) != len(xs):
    raise ConfigError(f'config.{name} has duplicates: {tuple(xs)!r} (each value is one cell; give it once)')


def _int_in(name, x, lo, hi):
  if not _is_int(x) or not lo <= x <= hi:
    raise ConfigError(f'config.{name} must be an integer in [{lo}, {hi}], got {x!r}')


def _bool(name, x):
  if not isinstance(x, bool):
    raise ConfigError(f'config.{name} must be True or False, got {x!r}')


def _unused(c, name, used: bool):
  """A base field set away from its default while this config never reads it is an error."""
  default = base_config()
  node_c, node_d = c, default
  for part in name.split('.'):
    node_c, node_d = node_c[part], node_d[part]
  same = (tuple(node_c) == tuple(node_d)) if isinstance(node_d, tuple) else node_c == node_d
  if not used and not same:
    raise ConfigError(f'config.{name} is set to {node_c!r} but unused by this config ({BASE_FIELD_RANGES[name]}); '
                      f'leave it at its default {node_d!r}')


def validate_base(c: ml_collections.ConfigDict):
  """The base fields (BASE_FIELD_RANGES): ranges, duplicates, and fields set but unused."""
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
  _distinct('dims', c.dims)
  _positive_ints('widths', c.widths)
  _distinct('widths', c.widths)
  for a, ws in (c.get('algorithm_widths') or {}).items():
    _choice('algorithm_widths keys', a, ALGORITHMS)
    if ws:
      _positive_ints(f'algorithm_widths.{a}', ws)
      _distinct(f'algorithm_widths.{a}', ws)  # a grid for an algorithm not run is allowed (configs prepare them)
  for name in ('rank', 'num_seeds'):
    if not _is_int(c[name]) or c[name] < 1:
      raise ConfigError(f'config.{name} must be an integer >= 1, got {c[name]!r}')
  for name in ('steps', 'chunk_steps'):
    _int_in(name, c[name], 1, INT32_MAX)
  if not _is_int(c.trace_every) or c.trace_every < 0 or (c.trace_every and chunk_of(c) % c.trace_every):
    raise ConfigError(f'config.trace_every must be 0 or a divisor of min(chunk_steps, steps)={chunk_of(c)}, '
                      f'got {c.trace_every!r}')
  _int_in('seed', c.seed, 0, UINT32_MAX)
  if c.seed + c.num_seeds - 1 > UINT32_MAX:
    raise ConfigError(f'config.num_seeds: seeds config.seed..seed+num_seeds-1 must be <= {UINT32_MAX} (uint32 keys), '
                      f'got up to {c.seed + c.num_seeds - 1}')
  t = c.target
  _choice('target.kind', t.kind, tensors.TARGET_KINDS)
  if not isinstance(t.path, str):
    raise ConfigError(f'config.target.path must be a string, got {t.path!r}')
  _unused(c, 'target.path', t.kind == 'file')
  _unused(c, 'target.coherence', t.kind == 'coherent')
  _unused(c, 'target.weights', t.kind != 'file')
  if c.ranks:
    _positive_ints('ranks', c.ranks)
    if len(set(c.ranks)) != len(c.ranks):
      raise ConfigError(f'config.ranks has duplicates: {tuple(c.ranks)!r}')
    if t.weights or t.kind == 'file':
      raise ConfigError('config.ranks must be empty when config.target.weights is set or target.kind=file '
                        f'(both fix the rank), got {tuple(c.ranks)!r}')
  rank_field = 'ranks (largest)' if c.ranks else 'rank'
  if t.kind == 'orthonormal' and max(ranks_of(c)) > min(c.dims):
    raise ConfigError(f'config.{rank_field} must be <= min(config.dims)={min(c.dims)} for orthonormal targets, '
                      f'got {max(ranks_of(c))}')
  if t.kind == 'coherent':
    _finite('target.coherence', t.coherence, 0.0, False, 1.0, True)
    if max(ranks_of(c)) + 1 > min(c.dims):
      raise ConfigError(f'config.{rank_field} must be <= min(config.dims) - 1 = {min(c.dims) - 1} for coherent '
                        f'targets, got {max(ranks_of(c))}')
  if t.weights:
    if len(t.weights) != c.rank:
      raise ConfigError(f'config.target.weights must have length config.rank={c.rank}, got {len(t.weights)}')
    for w in t.weights:
      _finite('target.weights', w)
    if not any(t.weights):
      raise ConfigError(f'config.target.weights are all 0: the target T* is zero, got {tuple(t.weights)!r}')
  _finite('target.noise', t.noise, 0.0)
  _choice('parametrization', c.parametrization, objectives.PARAMETRIZATIONS)
  _choice('signs', c.signs, SIGNS)
  _choice('loss', c.loss, LOSSES)
  if c.loss == 'implicit' and not _factored(c):
    raise ConfigError('config.loss=implicit needs a factored target (target.kind != file or a .npz CP file, '
                      'target.noise = 0); use loss=dense or auto')
  _choice('optimizer', c.optimizer, algorithms.OPTIMIZERS)
  _finite('lr', c.lr, 0.0, True)
  _finite('eps', c.eps, 0.0, True, 1.0, True)
  _finite('init_scale', c.init_scale, 0.0, True)
  _finite('reg', c.reg, 0.0)
  _finite('alpha', c.alpha, 0.0, True)
  if not isinstance(c.alphas, (tuple, list)):
    raise ConfigError(f'config.alphas must be a tuple of numbers > 0 (empty: config.alpha), got {c.alphas!r}')
  for a in c.alphas:
    _finite('alphas', a, 0.0, True)
  if len(set(c.alphas)) != len(c.alphas):
    raise ConfigError(f'config.alphas has duplicates: {tuple(c.alphas)!r}')
  has = lambda *names: any(a in algs for a in names)
  for name in ('lr', 'reg', 'alpha', 'alphas'):
    _unused(c, name, has('gd'))
  for name in ('init_scale', 'parametrization'):
    _unused(c, name, has('gd', 'lazy', 'lazy_exact'))
  _unused(c, 'optimizer', has('gd', 'beyond_lazy'))
  _finite('checkpoint_every_s', c.checkpoint_every_s, 0.0)
  _finite('memory_gb', c.memory_gb, 0.0)
  for name in ('save_params', 'x64', 'distributed'):
    _bool(name, c[name])


def validate(c: ml_collections.ConfigDict):
  """Raises ConfigError for the first field out of range."""
  validate_base(c)
  _validate_beyond_lazy(c.beyond_lazy)
  _validate_lazy(c)


def _validate_beyond_lazy(b: ml_collections.ConfigDict):
  _finite('beyond_lazy.lr', b.lr, 0.0, True)
  _finite('beyond_lazy.init_scale', b.init_scale, 0.0, True)
  _finite('beyond_lazy.reinit_threshold', b.reinit_threshold, 0.0)
  if not _is_int(b.epoch_length) or b.epoch_length < 1:
    raise ConfigError(f'config.beyond_lazy.epoch_length must be an integer >= 1, got {b.epoch_length!r}')
  _finite('beyond_lazy.epoch_growth', b.epoch_growth, 1.0)
  _finite('beyond_lazy.reg', b.reg, 0.0)


def _validate_lazy(c: ml_collections.ConfigDict):
  z = c.lazy
  for name in ('symmetric_init', 'ntk_scaling'):
    if not isinstance(z[name], bool):
      raise ConfigError(f'config.lazy.{name} must be True or False, got {z[name]!r}')
  _finite('lazy.lr_scale', z.lr_scale, 0.0, True, 2.0, True)
  _finite('lazy.momentum', z.momentum, 0.0, False, 1.0, True)
  if not _is_int(z.power_iters) or z.power_iters < 1:
    raise ConfigError(f'config.lazy.power_iters must be an integer >= 1, got {z.power_iters!r}')


def widths_of(c: ml_collections.ConfigDict, algorithm: str) -> tuple:
  """The widths `algorithm` runs: config.algorithm_widths[algorithm], or config.widths when empty."""
  per = c.get('algorithm_widths') or {}
  return tuple(int(w) for w in (per.get(algorithm) or c.widths))


def ranks_of(c: ml_collections.ConfigDict) -> tuple:
  """The ranks the experiment sweeps: config.ranks, or (config.rank,) when that is empty."""
  return tuple(int(k) for k in c.ranks) or (c.rank,)


def chunk_of(c: ml_collections.ConfigDict) -> int:
  """Steps per compiled chunk."""
  return min(c.chunk_steps, c.steps)


def resolve_loss(c: ml_collections.ConfigDict) -> str:
  """'auto' -> implicit when the target is factored (no noise; no file, or a .npz CP file), else dense."""
  if c.loss != 'auto':
    return c.loss
  return 'implicit' if _factored(c) else 'dense'


def _factored(c: ml_collections.ConfigDict) -> bool:
  """T* is exactly a CP tensor: generated, or a .npz (coeffs, factors) file; and no noise."""
  kind_ok = c.target.kind != 'file' or tensors.is_cp_file(c.target.path)
  return kind_ok and not c.target.noise > 0
