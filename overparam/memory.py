"""Memory estimates of every program of a sweep, checked before anything is allocated.

A program vmaps every (width, seed) cell of one width bucket, so its peak is about runs-per-device
x bytes-per-run. Each algorithm's registry entry gives its per-run count (registry.AlgorithmSpec:
words_per_run, the arrays a step keeps alive, doubled here as a margin for XLA's temporaries; or
bytes_per_run, a measured estimate). benchmarks/memory_bench.py compares these estimates with
measured peak resident memory. Every cell-axis value (config.axes) is its own program.
"""

import functools
import math
import os

import jax
import jax.numpy as jnp

from overparam import config_lib, optim, registry
from overparam.errors import ConfigError

MARGIN = 2


def available_bytes() -> int:
  """Free memory of one device: the accelerator allocator's limit, else the host's MemAvailable."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - backends without memory stats
    stats = None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def params_per_component(parametrization: str, dim: int) -> int:
  """cp has a coefficient per component besides its d-vector."""
  return dim + 1 if parametrization == 'cp' else dim


@functools.lru_cache(maxsize=256)
def optimizer_words(opt: optim.Optimizer, n_params: int, steps: int) -> int:
  """Elements of the optimizer state for n_params parameters (its moments), by jax.eval_shape."""
  state = jax.eval_shape(opt.make(1.0, steps).init, jax.ShapeDtypeStruct((n_params,), jnp.float32))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def loss_words(order: int, dim: int, terms: int, rank: int, loss: str) -> int:
  """Intermediates of the loss of a `terms`-component CP model."""
  if loss == 'dense':
    return 3 * dim ** order + 2 * terms * dim ** (order - 1)  # T*, residual; Khatri-Rao power, R(v^{l-1})
  return 6 * terms * terms + 4 * terms * rank + 2 * terms * dim  # Gram powers and G V of the implicit loss


def cp_model_words(c, dim: int, bucket: int, rank: int, *, per_comp: int, terms: int, loss: str,
                   opt: optim.Optimizer = None) -> int:
  """A run of GD on a CP-form model: W, W0, grad, update, new W, the optimizer state, the loss."""
  params = bucket * per_comp
  opt = opt if opt is not None else optim.from_config(c)
  return 5 * params + optimizer_words(opt, params, c.steps) + loss_words(c.order, dim, terms, rank, loss)


def words_per_run(alg: str, c, dim: int, bucket: int, rank: int) -> int:
  """Array elements one run of `alg` keeps alive at its peak (before the margin)."""
  return registry.get(alg).words_per_run(c, dim, bucket, rank)


def program_bytes(alg: str, c, dim: int, bucket: int, rank: int, runs: int) -> int:
  """Bytes of one program of `runs` runs per device. A one-program algorithm's runs are seeds that
  share temporaries (its solve runs one seed at a time): its bytes_per_run gets runs= and returns the
  whole program's bytes."""
  spec = registry.get(alg)
  if spec.is_one_program(c) and spec.bytes_per_run is not None:
    return spec.bytes_per_run(c, dim, bucket, rank, runs=runs)
  if spec.bytes_per_run is not None:
    per_run = spec.bytes_per_run(c, dim, bucket, rank)
  else:
    per_run = MARGIN * (8 if c.x64 else 4) * spec.words_per_run(c, dim, bucket, rank)
  return runs * per_run


def check(c, limit_bytes: int = 0):
  """Raises ConfigError naming the sizes if any program of the sweep will not fit.

  limit_bytes > 0 (or config.memory_gb > 0) replaces the detected free memory of one device. On a
  CPU every local device shares the host's memory, so a program's runs all count against it.
  Every program of every cell-axis value is checked with that value's config.
  """
  limit = limit_bytes or (int(c.memory_gb * 2 ** 30) if c.memory_gb > 0 else available_bytes())
  devices = jax.local_devices()
  share = 1 if devices[0].platform == 'cpu' else len(devices)
  for alg in c.algorithms:
    spec = registry.get(alg)
    for cc, _ in config_lib.cell_configs(c, alg):
      for dim in c.dims:
        for ws in spec.width_groups(config_lib.widths_of(c, alg), cc):
          runs = math.ceil((1 if spec.is_one_program(cc) else len(ws)) * c.num_seeds / share)  # one program: seeds
          need = program_bytes(alg, cc, dim, max(ws), cc.rank, runs)
          if need > limit:
            what = f', {spec.memory_detail(cc, dim, max(ws))}' if spec.memory_detail else ''
            raise ConfigError(
                f'config: the {alg} program for d={dim}, widths {ws} ({runs} runs per device{what}) needs '
                f'about {need / 2 ** 30:.3g} GiB > {limit / 2 ** 30:.3g} GiB available; reduce config.num_seeds, '
                f'config.widths or config.dims, use more devices, or set config.memory_gb')
