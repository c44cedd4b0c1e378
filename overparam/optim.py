"""Optimizers and step-size schedules from optax, by name.

config.optimizer is the name of any optax alias that takes a `learning_rate` (sgd, adam, adamw,
lion, rmsprop, ...; `optimizer_names()`), config.optimizer_kwargs its other arguments,
config.schedule one of SCHEDULES and config.schedule_kwargs that schedule's other arguments. An
algorithm with a step size lr builds `Optimizer(...).make(lr, steps)`; the default (sgd, constant)
is `optax.sgd(lr)` itself, so it gives the numbers of a hand-written `optax.sgd(lr)`.

Validation (`check`) inspects the optax signatures, so a name or argument optax does not have is a
ConfigError naming the field, before anything runs.
"""

import dataclasses
import functools
import inspect
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from overparam.errors import ConfigError

# The config fields of the optimizer (read by every algorithm with a step size).
FIELDS = ('optimizer', 'optimizer_kwargs', 'schedule', 'schedule_kwargs')

# Aliases that take a learning rate but are not plain first-order updates (lbfgs needs the loss in
# its update) or are building blocks rather than optimizers.
_EXCLUDED = ('lbfgs', 'scale_by_learning_rate')


@functools.lru_cache(maxsize=None)
def optimizer_names() -> Tuple[str, ...]:
  """Every optax optimizer alias whose signature has `learning_rate`."""
  out = []
  for n in dir(optax):
    f = getattr(optax, n)
    if n.startswith('_') or n.startswith('scale_by') or n in _EXCLUDED or isinstance(f, type) or not callable(f):
      continue
    try:
      if 'learning_rate' in inspect.signature(f).parameters:
        out.append(n)
    except (TypeError, ValueError):
      continue
  return tuple(sorted(out))


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """An optax schedule: `value` is the argument that receives lr, `steps` the one that receives
  config.steps (None: none), `defaults` values of other arguments the user may override. build: what
  schedule_fn calls instead of fn (same signature and numbers; None: fn itself); fn's signature is
  what the checks read."""
  fn: Callable
  value: str
  steps: Optional[str] = None
  defaults: Tuple[Tuple[str, float], ...] = ()
  build: Optional[Callable] = None


def _warmup_cosine(init_value, peak_value, warmup_steps, decay_steps, end_value=0.0, exponent=1.0):
  """optax.warmup_cosine_decay_schedule without its Python test `peak_value == 0.0`, which refuses a
  traced peak_value (lr is a leaf of the algorithm value: traced under fit's jit and the engine's
  vmap). The same schedule (optax 0.2.8's construction): concrete values give optax's numbers."""
  if isinstance(peak_value, jax.core.Tracer):
    zero = peak_value == 0.0
    alpha = jnp.where(zero, 0.0, end_value / jnp.where(zero, 1.0, peak_value))
  else:
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
  return optax.join_schedules(
      [optax.linear_schedule(init_value=init_value, end_value=peak_value, transition_steps=warmup_steps),
       optax.cosine_decay_schedule(init_value=peak_value, decay_steps=decay_steps - warmup_steps, alpha=alpha,
                                   exponent=exponent)],
      [warmup_steps])


# name -> optax schedule (None: the constant lr itself).
SCHEDULES: Dict[str, Optional[ScheduleSpec]] = {
    'constant': None,
    'cosine': ScheduleSpec(optax.cosine_decay_schedule, 'init_value', 'decay_steps'),
    'warmup_cosine': ScheduleSpec(optax.warmup_cosine_decay_schedule, 'peak_value', 'decay_steps',
                                  (('init_value', 0.0),), build=_warmup_cosine),
    'warmup_constant': ScheduleSpec(optax.warmup_constant_schedule, 'peak_value', None, (('init_value', 0.0),)),
    'linear': ScheduleSpec(optax.linear_schedule, 'init_value', 'transition_steps', (('end_value', 0.0),)),
    'polynomial': ScheduleSpec(optax.polynomial_schedule, 'init_value', 'transition_steps',
                               (('end_value', 0.0), ('power', 1.0))),
    'exponential': ScheduleSpec(optax.exponential_decay, 'init_value'),
    'cosine_onecycle': ScheduleSpec(optax.cosine_onecycle_schedule, 'peak_value', 'transition_steps'),
}


def _params(fn):
  return inspect.signature(fn).parameters


def _hashable(v):
  return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def as_items(d) -> Tuple[Tuple[str, object], ...]:
  """A dict-like (ConfigDict, dict) -> sorted hashable ((name, value), ...)."""
  if not d:
    return ()
  if isinstance(d, tuple):  # already items
    return tuple(sorted((k, _hashable(v)) for k, v in d))
  d = d.to_dict() if hasattr(d, 'to_dict') else dict(d)
  return tuple(sorted((k, _hashable(v)) for k, v in d.items()))


def check(name: str, kwargs, schedule: str, schedule_kwargs, steps=1, prefix: str = 'config.'):
  """Raises ConfigError for an optimizer/schedule name or argument that optax does not have, or a
  schedule optax refuses for `steps` steps (e.g. warmup_steps >= steps; skipped when steps is None)."""
  names = optimizer_names()
  if name not in names:
    raise ConfigError(f'{prefix}optimizer must be an optax optimizer taking a learning rate, one of '
                      f'{", ".join(names)}; got {name!r}')
  params = _params(getattr(optax, name))
  for k, _ in as_items(kwargs):
    if k == 'learning_rate' or k not in params:
      ok = ', '.join(p for p in params if p != 'learning_rate')
      raise ConfigError(f'{prefix}optimizer_kwargs.{k} is not an argument of optax.{name} (it takes {ok})')
  if schedule not in SCHEDULES:
    raise ConfigError(f'{prefix}schedule must be one of {", ".join(SCHEDULES)}, got {schedule!r}')
  s = SCHEDULES[schedule]
  given = dict(as_items(schedule_kwargs))
  if s is None:
    if given:
      raise ConfigError(f'{prefix}schedule_kwargs must be empty for schedule=constant, got {sorted(given)}')
    return
  sp = _params(s.fn)
  for k in given:
    if k not in sp or k in (s.value, s.steps):
      ok = ', '.join(p for p in sp if p not in (s.value, s.steps))
      raise ConfigError(f'{prefix}schedule_kwargs.{k} is not an argument of the {schedule} schedule '
                        f'(optax.{s.fn.__name__}; it takes {ok})')
  missing = [p for p, v in sp.items() if v.default is inspect.Parameter.empty and p not in (s.value, s.steps)
             and p not in given and p not in dict(s.defaults)]
  if missing:
    raise ConfigError(f'{prefix}schedule_kwargs.{missing[0]} is required by the {schedule} schedule '
                      f'(optax.{s.fn.__name__})')
  if steps is None:
    return
  try:
    schedule_fn(schedule, 1.0, steps, schedule_kwargs)
  except (ValueError, TypeError) as e:
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f'{prefix}schedule_kwargs: optax.{s.fn.__name__} refuses them with config.steps={steps} '
                      f'({detail})') from None


def schedule_fn(schedule: str, lr, steps: int, schedule_kwargs=()):
  """The step size: lr itself for `constant`, else the optax schedule count -> step size."""
  s = SCHEDULES[schedule]
  if s is None:
    return lr
  kw = {**dict(s.defaults), **dict(as_items(schedule_kwargs)), s.value: lr}
  if s.steps is not None:
    kw[s.steps] = steps
  return (s.build or s.fn)(**kw)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A hashable optimizer choice (part of an algorithm's frozen dataclass)."""
  name: str = 'sgd'
  kwargs: Tuple = ()
  schedule: str = 'constant'
  schedule_kwargs: Tuple = ()

  def make(self, lr, steps: int, **extra) -> optax.GradientTransformation:
    """optax.<name>(schedule(lr), **kwargs, **extra); extra: defaults an algorithm adds (kwargs win)."""
    kw = {**extra, **dict(self.kwargs)}
    return getattr(optax, self.name)(schedule_fn(self.schedule, lr, steps, self.schedule_kwargs), **kw)


def optimizer(name='sgd', kwargs=None, schedule='constant', schedule_kwargs=None, steps=None,
              prefix='') -> Optimizer:
  """A checked Optimizer from an optax alias name, its other arguments (a dict), a schedule name and
  its arguments. steps: the step budget, when known, for the schedule checks that need it. ConfigError
  naming `{prefix}optimizer...` for anything optax does not have."""
  check(name, kwargs, schedule, schedule_kwargs, steps, prefix=prefix)
  return Optimizer(name=name, kwargs=as_items(kwargs), schedule=schedule, schedule_kwargs=as_items(schedule_kwargs))


def as_optimizer(x) -> Optimizer:
  """An Optimizer, or an optax alias name with its default arguments and a constant lr."""
  return x if isinstance(x, Optimizer) else Optimizer(name=x)
