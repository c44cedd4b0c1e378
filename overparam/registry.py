"""The algorithm registry: one AlgorithmSpec per algorithm name.

Everything outside an algorithm's own module learns about it from its spec: config_lib (its config
sub-dict defaults and validation), experiments (how to build it), memory (its per-run estimate),
analysis and plots (its flags). Adding an algorithm = one module that defines its class (a subclass
of algorithms.Algorithm) and an AlgorithmSpec, plus one line in BUILTIN below
(docs/ADDING_AN_ALGORITHM.md). A test or a user session registers its own with `register` /
`unregister`, or the context manager `registered`.
"""

import contextlib
import dataclasses
import importlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

# One line per built-in algorithm: 'module:attribute' of its AlgorithmSpec. Loaded on first use, so
# that the algorithm modules may import config_lib (which imports this module).
BUILTIN = (
    'overparam.algorithms:GD_SPEC',
    'overparam.beyond_lazy:SPEC',
    'overparam.lazy:LAZY_SPEC',
    'overparam.lazy:LAZY_EXACT_SPEC',
)


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """What the engine needs to know about one algorithm.

  name: the name in config.algorithms and in rows.
  build(config, dim, bucket) -> algorithms.Algorithm: one program's algorithm (bucket = padded width).
  defaults: the defaults of its config sub-dict config.<name> (None: it has none).
  validate(config): raises ConfigError for its own fields (called when it is selected or its
    sub-dict is in use).
  reads: top-level config fields (dotted for other sub-dicts) it reads besides the common ones
    (order, dims, rank, target.*, steps, eps, x64, ...): an axis over a field no selected algorithm
    reads is refused, and a cell axis only multiplies the cells of the algorithms that read it.
  words_per_run(config, dim, bucket, rank) -> int: array elements one run keeps alive at its peak
    (memory.py adds the margin and the dtype).
  bytes_per_run(config, dim, bucket, rank) -> int: replaces words_per_run when the estimate is
    measured in bytes (margin included); memory_detail(config, dim, bucket) -> str adds sizes to
    the refusal message.
  row_fields: names of the numbers its extras() add to each results row.
  alpha_scaled: its model is alpha-scaled (reads config.alpha; rows carry alpha; others carry None).
  lazy: its model is a linearization at the init (plotted with the lazy arm, not CP-exportable).
  one_program: all widths of the grid run in one program instead of width buckets: a bool, or a
    function of the config (is_one_program). Such an algorithm is built with build(config, dim,
    bucket, widths=grid), its runs are the seeds, and its state and outputs carry a leading width
    axis that experiments.split_widths turns into (width, seed) cells (lazy.LazyExact).
  scale_free: its numbers do not depend on the scale of T* (it fits T*/||T*||): the host divides the
    target by a power of two near ||T*|| when that norm is extreme, so any finite non-zero target
    trains alike (experiments.target_scale).
  """
  name: str
  build: Callable[..., Any]
  defaults: Optional[Dict[str, Any]] = None
  validate: Optional[Callable[[Any], None]] = None
  reads: Tuple[str, ...] = ()
  words_per_run: Optional[Callable[..., int]] = None
  bytes_per_run: Optional[Callable[..., int]] = None
  memory_detail: Optional[Callable[..., str]] = None
  row_fields: Tuple[str, ...] = ()
  alpha_scaled: bool = False
  lazy: bool = False
  one_program: Any = False
  scale_free: bool = False

  def __post_init__(self):
    if (self.words_per_run is None) == (self.bytes_per_run is None):
      raise ValueError(f'algorithm {self.name!r}: give exactly one of words_per_run, bytes_per_run')

  def uses(self, field: str) -> bool:
    """Whether this algorithm reads `field` (dotted): its own sub-dict, or a field in `reads`."""
    return (field in self.reads or field.split('.')[0] == self.name or (field == 'alpha' and self.alpha_scaled)
            or any(field.startswith(r + '.') for r in self.reads))

  def is_one_program(self, config) -> bool:
    """Whether this config's width grid runs as one program."""
    return bool(self.one_program(config) if callable(self.one_program) else self.one_program)

  def width_groups(self, widths, config):
    """The width buckets of one grid under `config`: one program per group."""
    from overparam import sweep  # noqa: PLC0415 - sweep imports the algorithm modules
    return [sorted(set(int(w) for w in widths))] if self.is_one_program(config) else sweep.bucket_widths(widths)


_REGISTRY: Dict[str, AlgorithmSpec] = {}
_LOADED = []


def _load_builtins():
  if _LOADED:
    return
  _LOADED.append(True)
  for entry in BUILTIN:
    module, attr = entry.split(':')
    spec = getattr(importlib.import_module(module), attr)
    _REGISTRY.setdefault(spec.name, spec)


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
  """Adds an algorithm; ValueError if the name is taken."""
  _load_builtins()
  if spec.name in _REGISTRY:
    raise ValueError(f'algorithm {spec.name!r} is already registered')
  _REGISTRY[spec.name] = spec
  return spec


def unregister(name: str):
  _load_builtins()
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
  """Registered names, built-ins first in BUILTIN order."""
  _load_builtins()
  return tuple(_REGISTRY)


def get(name: str) -> AlgorithmSpec:
  _load_builtins()
  return _REGISTRY[name]


def find(name: str) -> Optional[AlgorithmSpec]:
  """The spec, or None for a name not registered (rows of a workdir written by another session)."""
  _load_builtins()
  return _REGISTRY.get(name)


def flag(name: str, what: str) -> bool:
  """A flag (alpha_scaled, lazy, one_program) of an algorithm; False for unknown names."""
  spec = find(name)
  return bool(spec is not None and getattr(spec, what))


def specs() -> Tuple[AlgorithmSpec, ...]:
  _load_builtins()
  return tuple(_REGISTRY.values())
