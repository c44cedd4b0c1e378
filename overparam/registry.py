"""The algorithm registry: one AlgorithmSpec per algorithm name, a plain container.

It imports nothing that registers into it: the built-in algorithms are registered by
overparam/algorithms.py (which the config layer imports), a test or a user session registers its own
with `register` / `unregister`, or the context manager `registered` (docs/ADDING_AN_ALGORITHM.md).
Everything outside an algorithm's own module learns about it from its spec: the config (defaults,
validation: the constructor's), the planner (how to build it from a config, its memory estimate), the
rows (its row fields), analysis and plots (its flags).

Thread safety: registration and lookup take a lock, so sessions in several threads see a consistent
registry.
"""

import contextlib
import dataclasses
import inspect
import re
import threading
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

# The config fields of loss = 'samples', read by every algorithm that declares samples=True.
SAMPLE_FIELDS = ('loss', 'num_samples', 'label_noise', 'online', 'train_eps')


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """What the config layer and the engine need to know about one algorithm.

  name: the name in config.algorithms and in rows.
  make: the public constructor (overparam.gd, ...): keyword arguments only; its defaults are the config
    defaults and its checks are the config validation (errors.ArgumentError, renamed to the field).
  fields: constructor argument -> the dotted config field it is read from (e.g. {'lr': 'beyond_lazy.lr'});
    arguments not listed keep the constructor's default. Fields under `<name>.` form the config sub-dict
    config.<name>; top-level fields may be shared with other algorithms (their defaults must agree).
  row_fields: names of the numbers its extras() add to each results row.
  words_per_run(alg, task, dim, bucket, rank) -> int: array elements one run keeps alive at its peak
    (memory.py adds the margin and the dtype); or bytes_per_run(alg, task, dim, bucket, rank,
    dtype_bytes[, runs=, widths=]) -> int, a measured estimate in bytes; memory_detail(alg, task, dim,
    bucket) -> str adds sizes to the refusal message.
  adapt(alg, task) -> alg: the algorithm value that runs `task` (e.g. lazy's samples variant); None: alg.
  samples: it can learn from samples (loss = 'samples'; reads SAMPLE_FIELDS); online: also online.
  alpha_scaled: its model is alpha-scaled (rows carry alpha; others carry None).
  lazy: its model is a linearization at the init (plotted with the lazy arm, not CP-exportable).
  one_program(task) -> bool: all widths of the grid run in one program whose runs are the seeds, built
    with grid(alg, widths); its outcome has a leading width axis (lazy_exact). None: width buckets.
  scale_free: its numbers do not depend on the scale of T* (it fits T*/||T*||): the planner divides the
    target by a power of two near ||T*|| when that norm is extreme.
  pads_dims: given RunData.dim_mask (D,) (1 on the first d coordinates) and T*'s factors zero-padded to
    D >= d, it computes what it computes at d (its draws use only the first d coordinates; the padded
    coordinates stay 0, and so do its exported factors' padded columns): with config.pad_dims and the
    implicit loss the planner builds every d's program at max(dims), so one compiled program serves all.
  """
  name: str
  make: Callable[..., Any]
  fields: Mapping[str, str]
  row_fields: Tuple[str, ...] = ()
  words_per_run: Optional[Callable[..., int]] = None
  bytes_per_run: Optional[Callable[..., int]] = None
  memory_detail: Optional[Callable[..., str]] = None
  adapt: Optional[Callable[..., Any]] = None
  samples: bool = False
  online: bool = False
  alpha_scaled: bool = False
  lazy: bool = False
  one_program: Optional[Callable[..., bool]] = None
  grid: Optional[Callable[..., Any]] = None
  scale_free: bool = False
  pads_dims: bool = False

  def __post_init__(self):
    if (self.words_per_run is None) == (self.bytes_per_run is None):
      raise ValueError(f'algorithm {self.name!r}: give exactly one of words_per_run, bytes_per_run')
    if (self.one_program is None) != (self.grid is None):
      raise ValueError(f'algorithm {self.name!r}: one_program and grid go together')
    params = inspect.signature(self.make).parameters
    unknown = [a for a in self.fields if a not in params]
    if unknown:
      raise ValueError(f'algorithm {self.name!r}: fields {unknown} are not arguments of {self.make.__name__}')

  @property
  def reads(self) -> Tuple[str, ...]:
    """Every config field it reads besides the common ones (order, dims, rank, target.*, steps, eps, ...)."""
    return tuple(dict.fromkeys(tuple(self.fields.values()) + (SAMPLE_FIELDS if self.samples else ())))

  def uses(self, field: str) -> bool:
    """Whether this algorithm reads `field` (dotted): a field of its constructor, its own sub-dict, or a
    field under one it reads."""
    return (field in self.reads or field.split('.')[0] == self.name
            or any(field.startswith(r + '.') for r in self.reads))

  def defaults(self) -> Dict[str, Any]:
    """{argument: default} of the constructor arguments read from the config."""
    params = inspect.signature(self.make).parameters
    return {a: params[a].default for a in self.fields}

  def config_defaults(self) -> Dict[str, Any]:
    """{dotted config field: default} of every field it reads."""
    return {self.fields[a]: v for a, v in self.defaults().items()}

  def subconfig_defaults(self) -> Optional[Dict[str, Any]]:
    """The defaults of its own sub-dict config.<name> (None: it has none)."""
    own = {f.split('.', 1)[1]: v for f, v in self.config_defaults().items() if f.startswith(self.name + '.')}
    return own or None

  def is_one_program(self, task) -> bool:
    return bool(self.one_program is not None and self.one_program(task))

  def argument_docs(self) -> Dict[str, str]:
    """{argument: its one-line meaning} from the constructor's docstring 'Args:' section."""
    return argument_docs(self.make)


def argument_docs(fn) -> Dict[str, str]:
  """{argument: text} from a Google-style 'Args:' section (continuation lines joined)."""
  doc = inspect.getdoc(fn) or ''
  out, current, inside = {}, None, False
  for line in doc.splitlines():
    if line.strip() == 'Args:':
      inside = True
      continue
    if not inside:
      continue
    if not line.strip() or (not line.startswith(' ') and line.strip().endswith(':')):
      if out:
        break
      continue
    m = re.match(r'^\s{2}(\w+): (.*)$', line)
    if m:
      current = m.group(1)
      out[current] = m.group(2).strip()
    elif current is not None:
      out[current] += ' ' + line.strip()
  return out


_REGISTRY: Dict[str, AlgorithmSpec] = {}
_LOCK = threading.RLock()


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
  """Adds an algorithm; ValueError if the name is taken or a shared config field's default disagrees
  with an algorithm already registered."""
  with _LOCK:
    if spec.name in _REGISTRY:
      raise ValueError(f'algorithm {spec.name!r} is already registered')
    mine = spec.config_defaults()
    for other in _REGISTRY.values():
      for field, v in other.config_defaults().items():
        if field in mine and '.' not in field and not _same(mine[field], v):
          raise ValueError(f'algorithm {spec.name!r}: config.{field} defaults to {mine[field]!r}, but '
                           f'{other.name!r} reads it with default {v!r}')
    _REGISTRY[spec.name] = spec
  return spec


def _same(a, b) -> bool:
  return a == b and type(a) is type(b)


def unregister(name: str):
  with _LOCK:
    del _REGISTRY[name]


@contextlib.contextmanager
def registered(spec: AlgorithmSpec) -> Iterator[AlgorithmSpec]:
  """`with registered(spec):` the algorithm exists inside the block only."""
  register(spec)
  try:
    yield spec
  finally:
    unregister(spec.name)


def names() -> Tuple[str, ...]:
  """Registered names, in registration order (the built-ins first)."""
  with _LOCK:
    return tuple(_REGISTRY)


def get(name: str) -> AlgorithmSpec:
  with _LOCK:
    return _REGISTRY[name]


def find(name: str) -> Optional[AlgorithmSpec]:
  """The spec, or None for a name not registered (rows of a workdir written by another session)."""
  with _LOCK:
    return _REGISTRY.get(name)


def flag(name: str, what: str) -> bool:
  """A flag (alpha_scaled, lazy, scale_free, pads_dims) of an algorithm; False for unknown names."""
  spec = find(name)
  return bool(spec is not None and getattr(spec, what))


def specs() -> Tuple[AlgorithmSpec, ...]:
  with _LOCK:
    return tuple(_REGISTRY.values())


def shared_defaults() -> Dict[str, Any]:
  """{top-level config field: default} over every registered algorithm (they agree: see register)."""
  out: Dict[str, Any] = {}
  for spec in specs():
    out.update({f: v for f, v in spec.config_defaults().items() if '.' not in f})
  return out
