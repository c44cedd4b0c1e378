"""Memory estimates of every program of a sweep, checked before anything is allocated.

A program vmaps every (width, seed) cell of one width bucket, so its peak is about runs-per-device
x bytes-per-run. The per-run counts below are the arrays a step keeps alive (parameters and their
copies, the loss's intermediates, the dense tensors), doubled as a margin for XLA's temporaries;
lazy_exact's count was measured (lazy.exact_program_bytes: its runs are seeds, each solving the
whole width grid). benchmarks/memory_bench.py compares
these estimates with measured peak resident memory.
"""

import math
import os

import jax

from overparam import config_lib, lazy
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


def words_per_run(alg: str, c, dim: int, bucket: int, rank: int) -> int:
  """Array elements one run of `alg` keeps alive at its peak (before the margin)."""
  order = c.order
  loss = 'dense' if alg in ('lazy', 'lazy_exact') else config_lib.resolve_loss(c)
  per_comp = dim + 1 if (c.parametrization == 'cp' and alg != 'beyond_lazy') else dim
  params = bucket * per_comp
  copies = 5 + (2 if c.optimizer == 'adam' else 0)  # W, W0, grad, update, new W (+ adam moments)
  k = 2 * bucket if (alg == 'gd' and (c.alpha != 1 or c.alphas)) else bucket  # alpha model: 2B terms
  words = copies * params
  if alg == 'beyond_lazy':
    words += bucket * dim  # the re-draw buffer
  if alg == 'lazy':
    words += 6 * dim ** order + (order + 2) * bucket * dim ** (order - 1) + 2 * params
  elif loss == 'dense':
    words += 3 * dim ** order + 2 * k * dim ** (order - 1)  # T*, residual; Khatri-Rao power and R(v^{l-1})
  else:
    words += 6 * k * k + 4 * k * rank + 2 * k * dim  # Gram powers and G V of the implicit loss
  return words


def program_bytes(alg: str, c, dim: int, bucket: int, rank: int, runs: int, widths=()) -> int:
  """widths: a one-program algorithm's grid (its runs are seeds), else ()."""
  dtype_bytes = 8 if c.x64 else 4
  if alg == 'lazy_exact' and widths:
    return lazy.exact_program_bytes(c.order, dim, c.parametrization, dtype_bytes, widths, runs)
  if alg == 'lazy_exact':
    per_run = lazy.exact_bytes_per_run(c.order, dim, bucket, c.parametrization, dtype_bytes)
  else:
    per_run = MARGIN * dtype_bytes * words_per_run(alg, c, dim, bucket, rank)
  return runs * per_run


def check(c, limit_bytes: int = 0):
  """Raises ConfigError naming the sizes if any program of the sweep will not fit.

  limit_bytes > 0 (or config.memory_gb > 0) replaces the detected free memory of one device. On a
  CPU every local device shares the host's memory, so a program's runs all count against it.
  """
  from overparam import experiments  # noqa: PLC0415 - experiments imports this module
  limit = limit_bytes or (int(c.memory_gb * 2 ** 30) if c.memory_gb > 0 else available_bytes())
  devices = jax.local_devices()
  share = 1 if devices[0].platform == 'cpu' else len(devices)
  alphas = max(1, len(c.alphas))
  for alg in c.algorithms:
    for rank in config_lib.ranks_of(c):
      for dim in c.dims:
        for ws in experiments.program_widths(alg, config_lib.widths_of(c, alg)):
          one = experiments.is_one_program(alg)
          runs = math.ceil((1 if one else len(ws)) * c.num_seeds * (alphas if alg == 'gd' else 1) / share)
          need = program_bytes(alg, c, dim, max(ws), rank, runs, tuple(ws) if one else ())
          if need > limit:
            what = ''
            if alg == 'lazy_exact':
              what = (f', J of {lazy.sym_dim(dim, c.order)} x '
                      f'{max(ws) * lazy.params_per_component(c.parametrization, dim)} (C(d+l-1,l) x params) per run')
            raise ConfigError(
                f'config: the {alg} program for d={dim}, widths {ws} ({runs} runs per device{what}) needs '
                f'about {need / 2 ** 30:.3g} GiB > {limit / 2 ** 30:.3g} GiB available; reduce config.num_seeds, '
                f'config.widths or config.dims, use more devices, or set config.memory_gb')
