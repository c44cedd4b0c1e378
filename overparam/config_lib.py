"""The config contract (docs/DESIGN.md section 8): defaults every experiment starts from, validation,
the cell axes, and what a config means for the library (the algorithm values, the task).

The fields an algorithm reads, their defaults and their checks are its constructor's
(registry.AlgorithmSpec.make and .fields): base_config reads the defaults from there, and validation
builds every algorithm from the config (errors.ArgumentError renamed to the config field).
Validation runs before any computation and raises ConfigError with a one-line message that names
the field and the accepted range; the launcher prints it as `error: ...`.
"""

import ast
import itertools
import math
import numbers
from typing import Dict, List, Tuple

import jax.numpy as jnp
import ml_collections

from overparam import algorithms, core, gradient_descent, network, objectives, optim, registry, tensors
from overparam.errors import ArgumentError, ConfigError

LOSSES = ('auto',) + core.LOSSES
SIGNS = gradient_descent.SIGNS  # the signs the algorithms accept
# Numeric fields that cannot be cell axes, and why.
NOT_AXES = {
    'dims': 'd is an axis of every sweep', 'widths': 'the width is an axis of every sweep',
    'num_seeds': 'seeds are an axis of every sweep', 'seed': 'seeds are an axis of every sweep',
    'eps': 'it defines m* for the whole summary; run one sweep per eps',
    'steps': 'rows use `steps` for the steps a run took; run one sweep per budget',
    'chunk_steps': 'it does not change results', 'trace_every': 'it does not change results',
    'bucket_ratio': 'it groups the width grid into programs', 'pad_dims': 'it groups the dims into programs',
    'checkpoint_every_s': 'it does not change results', 'memory_gb': 'it does not change results',
}


def base_config() -> ml_collections.ConfigDict:
  """Every field the launcher understands, with neutral defaults; configs override what they need.

  The fields the algorithms read (lr, init_scale, ..., and the sub-dicts config.beyond_lazy,
  config.lazy, ...) take their defaults from the algorithms' constructors (registry.AlgorithmSpec);
  steps and eps from overparam.fit's (core.DEFAULT_STEPS, DEFAULT_EPS).
  """
  shared = registry.shared_defaults()
  c = ml_collections.ConfigDict()
  c.algorithms = ('gd',)
  c.order = 3
  c.dims = (10,)
  c.rank = 3
  c.ranks = ()  # a sweep over r: one cell per value (rows carry rank; m* is fitted against r); () = (rank,)
  # Cell axes over any numeric field, each 'field=v1,v2,...' (dotted for nested fields), e.g.
  # ('lr=0.01,0.1', 'beyond_lazy.init_scale=1e-3,1e-2'): one cell per combination of values; rows carry
  # each value under the field's name. config.ranks and config.alphas are spellings of 'rank=...' and
  # 'alpha=...'.
  c.axes = ()
  c.widths = (3, 6, 12)
  # Per-algorithm width grids; () = config.widths. The algorithms of one config share targets, seeds
  # and T*, but the lazy arms need m ~ d^{l-1} while gd and beyond_lazy need a few times r.
  c.algorithm_widths = ml_collections.ConfigDict({a: () for a in registry.names()})
  c.num_seeds = 4
  c.seed = 0
  c.target = ml_collections.ConfigDict(
      dict(kind='random_unit', weights=(), noise=0.0, coherence=0.0, path='', rank=0))
  c.parametrization = shared['parametrization']
  c.signs = shared['signs']
  c.loss = 'auto'
  c.steps = core.DEFAULT_STEPS
  c.lr = shared['lr']
  # Any optax optimizer taking a learning rate (optim.optimizer_names()), its other arguments (a dict:
  # --config.optimizer_kwargs='{"weight_decay": 0.01}'), and a step-size schedule (optim.SCHEDULES)
  # with its arguments; for every algorithm with a step size (gd, beyond_lazy, lazy).
  c.optimizer = shared['optimizer']
  c.optimizer_kwargs = ml_collections.ConfigDict(dict(shared['optimizer_kwargs'] or {}))
  c.schedule = shared['schedule']
  c.schedule_kwargs = ml_collections.ConfigDict(dict(shared['schedule_kwargs'] or {}))
  c.init_scale = shared['init_scale']
  c.reg = shared['reg']
  c.alpha = shared['alpha']
  c.alphas = ()  # a sweep over alpha for gd: one cell per value (rows carry alpha); () = (alpha,)
  c.eps = core.DEFAULT_EPS
  c.save_params = True
  c.x64 = False
  c.chunk_steps = 250
  # A program's width bucket holds the widths in [W / bucket_ratio, W] (W its largest): padding a
  # run to its bucket costs up to bucket_ratio x its compute, and every bucket is a compiled program
  # (~1-3 s of XLA compile on a CPU): small iterative runs are compile-bound, use a larger ratio.
  c.bucket_ratio = 2.0
  # gd and beyond_lazy with the implicit loss: build every d's program at d = max(dims), each d's
  # data (T*'s factors) zero-padded, so that one compiled program serves every d (the padded
  # coordinates stay exactly 0; sums gain zero terms, so numbers match an unpadded run to rounding,
  # not bit for bit). Costs max(dims) / d the compute at each d.
  c.pad_dims = False
  c.trace_every = 0  # > 0: save each run's trajectory every this many steps (divides chunk_steps)
  c.checkpoint_every_s = 60.0
  c.distributed = False
  c.memory_gb = 0.0  # memory one device may use (0: detect); every program is checked against it
  # loss = 'samples' (overparam/network.py): learn T* from num_samples points x ~ N(0, I_d) labelled by
  # the network f_{T*}(x) = <T*, H_l(x)> (+ label_noise ||T*|| N(0, 1)); online: fresh samples every step.
  # A samples run stops when its training error falls below train_eps (0: eps / 10); eps judges the
  # population error (n* = the smallest num_samples at which half the seeds reach rel_error < eps).
  # num_samples can be a cell axis: config.axes = ('num_samples=64,128,256',).
  c.num_samples = 1000
  c.label_noise = 0.0
  c.online = False
  c.train_eps = 0.0
  # One sub-dict per algorithm that declares defaults (config.lazy: overparam/linearized.py;
  # config.beyond_lazy: overparam/beyond_lazy_gd.py).
  for spec in registry.specs():
    own = spec.subconfig_defaults()
    if own is not None:
      c[spec.name] = ml_collections.ConfigDict(own)
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
    'algorithms': 'non-empty tuple of distinct registered algorithm names (gd, beyond_lazy, lazy, lazy_exact, ...)',
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
    'target.rank': 'integer >= 0: the rank of a dense (.npy) file target when known, recorded in rows (0: unknown, '
                   'rows carry rank null); set only for a .npy target (a .npz target gives its own)',
    'parametrization': ', '.join(objectives.PARAMETRIZATIONS) + '; unused (keep the default) with only beyond_lazy',
    'signs': ', '.join(SIGNS),
    'loss': ', '.join(LOSSES) + '; implicit and samples need a factored target',
    'steps': f'integer in [1, {INT32_MAX}]',
    'lr': 'finite number > 0; used by gd only',
    'optimizer': 'an optax optimizer alias that takes learning_rate (sgd, adam, adamw, lion, ...); '
                 'with optimizer_kwargs, schedule, schedule_kwargs (overparam/optim.py)',
    'init_scale': 'finite number > 0; used by gd, lazy, lazy_exact',
    'reg': 'finite number >= 0; used by gd only',
    'alpha': 'finite number > 0; used by gd only',
    'alphas': 'tuple of distinct finite numbers > 0; () = (alpha,); used by gd only',
    'eps': 'number in (0, 1)',
    'save_params': 'True or False',
    'x64': 'True or False',
    'chunk_steps': f'integer in [1, {INT32_MAX}]',
    'bucket_ratio': 'finite number >= 1 (1: one program per width)',
    'pad_dims': 'True or False (gd, beyond_lazy with loss=implicit: one program for every d)',
    'trace_every': '0 or a divisor of min(chunk_steps, steps)',
    'checkpoint_every_s': 'finite number >= 0 (0: after every chunk)',
    'distributed': 'True or False (needs --coordinator_address, --num_processes, --process_id outside Slurm/TPU)',
    'memory_gb': 'finite number >= 0 (0: detect)',
    'optimizer_kwargs': "{} or the optimizer's other arguments, e.g. {'weight_decay': 0.01} (checked against its signature)",
    'schedule': 'constant, cosine, warmup_cosine, warmup_constant, linear, polynomial, exponential, cosine_onecycle',
    'schedule_kwargs': "{} or the schedule's other arguments, e.g. {'warmup_steps': 100}",
    'axes': "tuple of 'field=v1,v2,...' strings: any numeric field (dotted for nested) as a cell axis; () = none",
    'num_samples': f'integer in [1, {INT32_MAX}]; used by loss=samples only (a cell axis: n* per width)',
    'label_noise': 'finite number >= 0 (label noise std in units of the norm of T*); used by loss=samples only',
    'online': 'True or False (fresh samples every step; gd and beyond_lazy); used by loss=samples only',
    'train_eps': 'finite number >= 0 (0: eps / 10; the training error at which a run stops); used by loss=samples only',
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


def _validate_one(c: ml_collections.ConfigDict):
  """Raises ConfigError for the first field out of range (one value of every cell axis): the base
  fields (BASE_FIELD_RANGES: ranges, duplicates, fields set but unused), then every algorithm's own."""
  names = registry.names()
  algs = c.algorithms
  if not isinstance(algs, (tuple, list)) or not algs:
    raise ConfigError(f'config.algorithms must be a non-empty tuple from {names}, got {algs!r}')
  for a in algs:
    _choice('algorithms', a, names)
  if len(set(algs)) != len(algs):
    raise ConfigError(f'config.algorithms has duplicates: {algs!r}')
  if not _is_int(c.order) or c.order < 2:
    raise ConfigError(f'config.order must be an integer >= 2, got {c.order!r}')
  _positive_ints('dims', c.dims)
  _distinct('dims', c.dims)
  _positive_ints('widths', c.widths)
  _distinct('widths', c.widths)
  for a, ws in (c.get('algorithm_widths') or {}).items():
    _choice('algorithm_widths keys', a, names)
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
  if not _is_int(t.rank) or t.rank < 0:
    raise ConfigError(f'config.target.rank must be an integer >= 0, got {t.rank!r}')
  _unused(c, 'target.rank', t.kind == 'file' and not tensors.is_cp_file(t.path))
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
  optim.check(c.optimizer, c.get('optimizer_kwargs'), c.get('schedule', 'constant'), c.get('schedule_kwargs'),
              c.steps)
  _finite('eps', c.eps, 0.0, True, 1.0, True)
  if not isinstance(c.alphas, (tuple, list)):
    raise ConfigError(f'config.alphas must be a tuple of numbers > 0 (empty: config.alpha), got {c.alphas!r}')
  for a in c.alphas:
    _finite('alphas', a, 0.0, True)
  if len(set(c.alphas)) != len(c.alphas):
    raise ConfigError(f'config.alphas has duplicates: {tuple(c.alphas)!r}')
  selected = [registry.get(a) for a in algs]
  read = lambda field: any(s.uses(field) for s in selected)
  for name in ('lr', 'reg', 'alpha', 'init_scale', 'parametrization', 'optimizer'):
    _unused(c, name, read(name))
  _unused(c, 'alphas', read('alpha'))
  _finite('checkpoint_every_s', c.checkpoint_every_s, 0.0)
  _finite('memory_gb', c.memory_gb, 0.0)
  _finite('bucket_ratio', c.bucket_ratio, 1.0)
  for name in ('save_params', 'x64', 'distributed', 'pad_dims'):
    _bool(name, c[name])
  _validate_samples(c)
  for spec in registry.specs():  # every algorithm's fields (its constructor's checks), selected or not
    algorithm_of(c, spec.name, selected=spec.name in algs)


def _validate_samples(c: ml_collections.ConfigDict):
  """config.num_samples, label_noise, online, train_eps: used by loss=samples, refused (when set) otherwise."""
  _bool('online', c.online)
  _finite('label_noise', c.label_noise, 0.0)
  _finite('train_eps', c.train_eps, 0.0)
  _int_in('num_samples', c.num_samples, 1, INT32_MAX)
  for name in ('num_samples', 'label_noise', 'online', 'train_eps'):
    _unused(c, name, c.loss == 'samples')
  if c.loss != 'samples':
    return
  if not _factored(c):
    raise ConfigError('config.loss=samples needs a factored target (target.kind != file or a .npz CP file, '
                      'target.noise = 0: the labels are f_{T*}(x) of its components); use config.label_noise '
                      'for noisy labels')
  unable = [a for a in c.algorithms if not registry.get(a).samples]
  if unable:
    raise ConfigError(f'config.loss=samples: {", ".join(unable)} cannot learn from samples '
                      f'(these can: {", ".join(s.name for s in registry.specs() if s.samples)})')
  if c.online:
    offline = [a for a in c.algorithms if not registry.get(a).online]
    if offline:
      online = [s.name for s in registry.specs() if s.online]
      raise ConfigError(f'config.online=True is for {", ".join(online)} (the others learn from a fixed '
                        f'training set), got config.algorithms with {", ".join(offline)}')


# One-line meaning of every field the algorithms do not own (theirs come from their constructors'
# docstrings, registry.AlgorithmSpec.argument_docs): the launcher's --helpfull lists them all.
FIELD_DOCS = {
    'algorithms': 'the algorithms run side by side on the same targets, seeds and T*',
    'order': 'l, the order of the symmetric tensors',
    'dims': 'the dimensions d, one target set (and one program per algorithm and width bucket) each',
    'rank': 'r, the rank of a generated target T* = sum_j c*_j a_j^{(x)l}',
    'ranks': 'a sweep over r (one target set per value; rows carry rank; m* is fitted against r)',
    'axes': "cell axes 'field=v1,v2,...' over any numeric field (a hyperparameter axis is vmapped in one program)",
    'widths': 'the widths m of gd and beyond_lazy (and of any algorithm without its own grid)',
    'algorithm_widths': 'per algorithm, its own width grid (empty: config.widths)',
    'num_seeds': 'seeds per cell: seed s has its own target, init and re-initialization keys',
    'seed': 'the first seed (seeds are seed .. seed + num_seeds - 1)',
    'target.kind': 'how T* is made: random_unit, orthonormal or coherent a_j, or a file',
    'target.weights': 'the weights c*_j (empty: all 1)',
    'target.noise': 'symmetric Gaussian noise added to the dense T*, relative to ||T*||_F',
    'target.coherence': 'the pairwise inner product of the a_j of a coherent target',
    'target.path': 'the target file: a dense .npy (d,)*l array or a .npz CP tensor (coeffs, factors)',
    'target.rank': 'the rank of a dense .npy target when known (rows record it; 0: unknown)',
    'loss': 'dense (O(m d^l)), implicit (O(m^2 d), factored targets) or samples (the network view); auto picks',
    'steps': 'the step budget of every run',
    'alphas': "a sweep over gd's alpha (one program per width bucket; rows carry alpha)",
    'eps': 'success: rel_error < eps (runs stop there; m* is the smallest width where half the seeds succeed)',
    'save_params': 'write every run\'s learned coeffs and factors to params/*.npz',
    'x64': 'run in float64 (jax_enable_x64); reported rel_errors are float64 either way',
    'chunk_steps': 'steps per compiled chunk (progress, early exit and checkpoints between chunks)',
    'bucket_ratio': 'a width bucket (one compiled program) holds widths within this ratio of its largest',
    'pad_dims': 'gd and beyond_lazy (implicit loss): every d runs one program built at max(dims), data zero-padded',
    'trace_every': 'record each run\'s trajectory every this many steps (0: off)',
    'checkpoint_every_s': 'seconds between mid-run checkpoints (0: after every chunk)',
    'distributed': 'a multi-process run (jax.distributed; process 0 writes the workdir)',
    'memory_gb': 'memory one device may use, checked before anything runs (0: detect)',
    'num_samples': 'loss=samples: the training-set size n (or the batch size online)',
    'label_noise': 'loss=samples: label noise, in units of ||T*||_F',
    'online': 'loss=samples: fresh samples every step (one-pass SGD)',
    'train_eps': 'loss=samples: the training error a run stops at (0: eps / 10)',
}


def _leaves(node, prefix=''):
  """(dotted name, value) of every field of a config; *_kwargs and algorithm_widths.NAME as leaves."""
  for k in node.keys():
    v = node[k]
    if isinstance(v, ml_collections.ConfigDict) and not k.endswith('_kwargs'):
      yield from _leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


def field_meaning(field: str) -> str:
  """The one-line meaning of a config field: FIELD_DOCS, else the docstring of the constructor argument
  the field feeds (the first registered algorithm that reads it); '' when none."""
  if field in FIELD_DOCS:
    return FIELD_DOCS[field]
  if field.startswith('algorithm_widths.'):
    return f'the width grid of {field.split(".", 1)[1]} (empty: config.widths)'
  for spec in registry.specs():
    for arg, f in spec.fields.items():
      if f == field:
        text = spec.argument_docs().get(arg, '')
        return f'{spec.name}: {text}' if '.' in field else text
  return ''


def field_help(c=None) -> List[str]:
  """Lines `--config.FIELD=DEFAULT  meaning` for every field of `c` (default: base_config()), with its
  accepted range where BASE_FIELD_RANGES states one."""
  c = base_config() if c is None else c
  out = []
  for field, value in _leaves(c):
    shown = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    out.append(f'  --config.{field}={shown!r}')
    meaning = field_meaning(field)
    accepted = BASE_FIELD_RANGES.get(field) or BASE_FIELD_RANGES.get(field.split('.')[0] + '.NAME', '')
    out.append(f'      {meaning}' + (f' [{accepted}]' if accepted else ''))
  return out


def validate(c: ml_collections.ConfigDict):
  """Raises ConfigError for the first field out of range, checking every cell-axis value."""
  _validate_one(c)
  axes = axes_of(c)  # parses and checks the spelling
  selected = [registry.get(a) for a in c.algorithms]
  for field, values in axes:
    legacy = field == 'alpha' and c.alphas  # config.alphas without gd has always been accepted (no cells)
    if is_algorithm_specific(field) and not any(s.uses(field) for s in selected) and not legacy:
      users = [s.name for s in registry.specs() if s.uses(field)]
      raise ConfigError(f'config.axes: no algorithm in config.algorithms uses {field} (used by {", ".join(users)})')
    for v in values:
      if v != get_field(c, field):
        _validate_one(with_values(c, {field: v}))


def unused_subconfig_fields(c) -> List[str]:
  """Fields of algorithm sub-dicts set away from their defaults while no selected algorithm reads
  that sub-dict (e.g. config.beyond_lazy.lr without beyond_lazy), as 'config.<dotted> = value'."""
  selected = [registry.get(a) for a in c.algorithms]
  out = []
  for spec in registry.specs():
    own = spec.subconfig_defaults()
    if own is None or spec.name not in c:
      continue
    sub = c[spec.name]
    if any(s.uses(f'{spec.name}.{k}') for s in selected for k in sub):
      continue
    out += [f'config.{spec.name}.{k} = {sub[k]!r}' for k, d in own.items()
            if k in sub and _plain(sub[k]) != _plain(d)]
  return out


def unused_given_fields(c, given) -> List[str]:
  """unused_subconfig_fields(c) restricted to the dotted fields in `given` (those the user set, e.g. on
  the command line): a config file may prepare the sub-dict of an arm the user adds with
  --config.algorithms (configs/default.py does for `lazy`), which is no reason for a warning."""
  given = set(given)
  return [u for u in unused_subconfig_fields(c) if u[len('config.'):].split(' = ')[0] in given]


def _plain(x):
  return tuple(x) if isinstance(x, list) else x


# ----------------------------------------------------------------------------------------------
# Cell axes.

def get_field(c, field: str):
  node = c
  for part in field.split('.'):
    node = node[part]
  return node


def with_values(c, values: Dict[str, object]):
  """A copy of c with the dotted fields set to values (c itself when nothing changes)."""
  if all(get_field(c, k) == v for k, v in values.items()):
    return c
  out = c.copy_and_resolve_references()
  for field, v in values.items():
    *path, leaf = field.split('.')
    node = out
    for p in path:
      node = node[p]
    try:
      node[leaf] = v
    except TypeError:
      raise ConfigError(f'config.axes: {field}={v!r} does not have the type of config.{field} '
                        f'({type(get_field(c, field)).__name__})') from None
  return out


def _is_number(x):
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_algorithm_specific(field: str) -> bool:
  """True when some registered algorithm reads the field itself (not a field every algorithm reads)."""
  return any(s.uses(field) for s in registry.specs())


def axes_of(c) -> List[Tuple[str, tuple]]:
  """[(dotted field, values)] of every cell axis: config.ranks as 'rank', then config.axes in order,
  then config.alphas as 'alpha'. ConfigError for a spelling, field or value that cannot be an axis."""
  out = []
  if c.ranks:
    out.append(('rank', tuple(int(k) for k in c.ranks)))
  axes = c.get('axes', ())
  if not isinstance(axes, (tuple, list)):
    raise ConfigError(f"config.axes must be a tuple of 'field=v1,v2,...' strings, got {axes!r}")
  for spec in axes:
    if not isinstance(spec, str) or '=' not in spec:
      raise ConfigError(f"config.axes entries must be 'field=v1,v2,...' strings, got {spec!r}")
    field, _, text = (x.strip() for x in spec.partition('='))
    try:
      current = get_field(c, field)
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f'config.axes: config has no field {field!r}') from None
    if field in NOT_AXES:
      raise ConfigError(f'config.axes: config.{field} cannot be a cell axis ({NOT_AXES[field]})')
    if not _is_number(current):
      raise ConfigError(f'config.axes: config.{field} is not a number ({current!r}) and cannot be a cell axis')
    values = []
    for t in text.split(','):
      try:
        v = ast.literal_eval(t.strip())
      except (SyntaxError, ValueError):
        v = None
      if not _is_number(v):
        raise ConfigError(f'config.axes: the values of {field} must be numbers, got {t.strip()!r}')
      values.append(v)
    if len(set(values)) != len(values):
      raise ConfigError(f'config.axes: {field} has duplicate values {tuple(values)!r}')
    if any(f == field for f, _ in out) or (field == 'alpha' and c.alphas):
      spelled = {'rank': ' (also given as config.ranks)', 'alpha': ' (also given as config.alphas)'}.get(field, '')
      raise ConfigError(f'config.axes: {field} is an axis twice{spelled}')
    out.append((field, tuple(values)))
  if c.alphas:
    out.append(('alpha', tuple(float(a) for a in c.alphas)))
  return out


def generic_axes(c) -> Tuple[str, ...]:
  """The axis fields rows carry besides rank and alpha (which every row has)."""
  return tuple(f for f, _ in axes_of(c) if f not in ('rank', 'alpha'))


def _combos(c, axes):
  """[(config, {field: value})] over the cartesian product of axes (in order, the last fastest)."""
  out = []
  for vals in itertools.product(*[v for _, v in axes]):
    values = dict(zip([f for f, _ in axes], vals))
    cc = with_values(c, values)
    out.append((cc, {f: get_field(cc, f) for f in values}))
  return out


def common_configs(c):
  """[(config, values)] over the axes every algorithm shares (fields no algorithm claims: rank,
  target fields, ...); they may change the targets."""
  return _combos(c, [(f, v) for f, v in axes_of(c) if not is_algorithm_specific(f)])


def algorithm_configs(c, algorithm: str):
  """[(config, values)] over the algorithm-specific axes that `algorithm` reads; c: a config of
  common_configs."""
  spec = registry.get(algorithm)
  return _combos(c, [(f, v) for f, v in axes_of(c) if is_algorithm_specific(f) and spec.uses(f)])


def cell_configs(c, algorithm: str):
  """[(config, values)] of every program family of `algorithm`: common x its own axes."""
  return [(ca, {**v, **va}) for cc, v in common_configs(c) for ca, va in algorithm_configs(cc, algorithm)]


def widths_of(c: ml_collections.ConfigDict, algorithm: str) -> tuple:
  """The widths `algorithm` runs: config.algorithm_widths[algorithm], or config.widths when empty."""
  per = c.get('algorithm_widths') or {}
  return tuple(int(w) for w in (per.get(algorithm) or c.widths))


def ranks_of(c: ml_collections.ConfigDict) -> tuple:
  """The ranks the experiment sweeps: config.ranks (or the rank axis), else (config.rank,)."""
  return tuple(int(k) for k in c.ranks) or next((v for f, v in _rank_axis(c)), (c.rank,))


def _rank_axis(c):
  """[('rank', values)] when config.axes has a rank axis (parsed leniently: validate checks it)."""
  for spec in c.get('axes', ()) or ():
    if isinstance(spec, str) and spec.partition('=')[0].strip() == 'rank':
      try:
        return [('rank', tuple(int(ast.literal_eval(t.strip())) for t in spec.partition('=')[2].split(',')))]
      except (SyntaxError, ValueError, TypeError):
        return []
  return []


def dtype_of(c) -> jnp.dtype:
  return jnp.float64 if c.x64 else jnp.float32


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


# ----------------------------------------------------------------------------------------------
# What a config means for the library.

def _value(v):
  """A config value as a constructor argument: ConfigDicts as dicts, lists as tuples."""
  if isinstance(v, ml_collections.ConfigDict):
    return v.to_dict()
  if isinstance(v, list):
    return tuple(v)
  return v


def algorithm_of(c, name: str, selected: bool = True):
  """The algorithm value of `name` under config `c` (its constructor called with the config fields it
  reads); a constructor's ArgumentError becomes a ConfigError naming the config field. selected=False
  (an algorithm the config does not run; validated for its own sub-dict only) leaves the fields it
  shares with others at their defaults."""
  spec = registry.get(name)
  kwargs = {}
  for arg, field in spec.fields.items():
    if selected or field.startswith(name + '.'):
      kwargs[arg] = _value(get_field(c, field))
  try:
    return spec.make(**kwargs)
  except ArgumentError as e:
    raise e.renamed(f'config.{spec.fields[e.argument]}') from None


def sample_spec_of(c):
  """The SampleSpec of config.loss = 'samples' (num_samples, online, label_noise); None otherwise."""
  if c.loss != 'samples':
    return None
  return network.SampleSpec(num_samples=int(c.num_samples), online=bool(c.online), label_noise=float(c.label_noise))


def task_of(c) -> core.Task:
  """The core.Task of config `c`: order, the resolved loss, the step budget, the samples."""
  return core.Task(order=int(c.order), loss=resolve_loss(c), steps=int(c.steps), sampling=sample_spec_of(c))


def stop_eps(c) -> float:
  """The error at which a run stops: config.eps; for loss = 'samples' the training error's threshold
  config.train_eps (0: eps / 10), so that the population error, which eps judges, can get below eps."""
  if c.loss != 'samples':
    return float(c.eps)
  return float(c.train_eps) or c.eps / 10
