"""The memory model: array elements a run keeps alive at its peak, and bytes of one compiled program.

A program vmaps its runs, so its peak is about runs-per-device x bytes-per-run. Each algorithm gives
its per-run count (words, doubled here as a margin for XLA's temporaries, or bytes, a measured
estimate; registry.AlgorithmSpec). benchmarks/memory_bench.py compares the estimates with measured
peak resident memory. The planner (overparam/planner.py) checks every program of a sweep against the
free memory before anything is allocated; overparam.fit and decompose check their one program.
"""

import ctypes
import functools
import math
import os

import jax
import jax.numpy as jnp

from overparam import optim

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


@functools.lru_cache(maxsize=1)
def _malloc_trim():
  """glibc's malloc_trim from the running process's own symbols (no library search), or None."""
  try:
    trim = ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):
    return None
  trim.argtypes = [ctypes.c_size_t]
  return trim


def release_free_heap(clear_compiled: bool = False) -> bool:
  """Returns the memory a finished program left behind, between the programs of a sweep.

  clear_compiled: also drop JAX's in-memory compilation and tracing caches (jax.clear_caches,
  process-wide): every new shape leaves executables and traces there (about 0.05 GiB per d of the
  default job); the next use of a dropped program reloads it (from the persistent cache when on).
  Then glibc's malloc_trim(0) hands the freed heap back to the OS, which glibc otherwise keeps.
  Together they make a sweep's peak its largest program rather than that plus what earlier ones
  left (measured on the default job: 1.60 -> 1.40 GiB, benchmarks/RESULTS.md section 6).
  Returns False where the C library has no malloc_trim (non-glibc systems; nothing is trimmed).
  """
  if clear_compiled:
    jax.clear_caches()
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def params_per_component(parametrization: str, dim: int) -> int:
  """cp has a coefficient per component besides its d-vector."""
  return dim + 1 if parametrization == 'cp' else dim


@functools.lru_cache(maxsize=256)
def optimizer_words(opt: optim.Optimizer, n_params: int, steps: int, extra=()) -> int:
  """Elements of the optimizer state for n_params parameters (its moments), by jax.eval_shape.
  extra: ((name, value), ...) arguments an algorithm adds (lazy's momentum)."""
  state = jax.eval_shape(opt.make(1.0, max(steps, 1), **dict(extra)).init,
                         jax.ShapeDtypeStruct((n_params,), jnp.float32))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def loss_words(order: int, dim: int, terms: int, rank: int, loss: str) -> int:
  """Intermediates of the loss of a `terms`-component CP model."""
  if loss == 'dense':
    return 3 * dim ** order + 2 * terms * dim ** (order - 1)  # T*, residual; Khatri-Rao power, R(v^{l-1})
  return 6 * terms * terms + 4 * terms * rank + 2 * terms * dim  # Gram powers and G V of the implicit loss


def sample_words(task, dim: int, terms: int) -> int:
  """The samples and the network's intermediates in one run (loss = 'samples'; else 0): x (n, d)
  (twice online: drawn every step), the n x terms pre-activations, Hermite recurrence and cotangents."""
  if task.loss != 'samples':
    return 0
  n = int(task.sampling.num_samples)
  return 2 * n * dim + (task.order + 4) * n * terms + 2 * n


def cp_model_words(task, opt: optim.Optimizer, dim: int, bucket: int, rank: int, *, per_comp: int,
                   terms: int) -> int:
  """A run of GD on a CP-form model: W, W0, grad, update, new W, the optimizer state, the loss, samples."""
  params = bucket * per_comp
  return (5 * params + optimizer_words(opt, params, task.steps) + loss_words(task.order, dim, terms, rank, task.loss)
          + sample_words(task, dim, terms))


def program_bytes(spec, alg, task, dim: int, bucket: int, rank: int, runs: int, dtype_bytes: int,
                  widths=()) -> int:
  """Bytes of one program of `runs` runs per device (registry spec + algorithm value + task). A
  one-program algorithm's runs are seeds that share temporaries: its bytes_per_run gets runs= and the
  grid `widths` and returns the whole program's bytes."""
  if spec.bytes_per_run is not None:
    if widths:
      return spec.bytes_per_run(alg, task, dim, bucket, rank, dtype_bytes, runs=runs, widths=tuple(widths))
    return runs * spec.bytes_per_run(alg, task, dim, bucket, rank, dtype_bytes)
  return runs * MARGIN * dtype_bytes * spec.words_per_run(alg, task, dim, bucket, rank)
