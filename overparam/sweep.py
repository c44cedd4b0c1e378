"""Seeds x widths in one compiled program, sharded over every device, run in checkpointed chunks.

A program is one (algorithm, order, d, width bucket): all its runs are stacked on a leading run
axis, vmapped, and scanned. Widths inside a bucket are padded to the bucket width B with a
component mask, so a width-m run computes what an unpadded width-m run computes. The run axis is
padded to a multiple of the device count and sharded with NamedSharding over a 1-d mesh; in a
multi-process job the mesh spans every process's devices and each process feeds its own shards.

The host drives the scan in chunks of `chunk_steps` steps: between chunks it logs progress with an
ETA, stops when every run has finished, and checkpoints the state atomically so a pre-empted job
resumes mid-run.
"""

import functools
import hashlib
import json
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from overparam import algorithms, results


def bucket_widths(widths: Sequence[int]) -> List[List[int]]:
  """Groups widths so each bucket's largest width is <= 2x its smallest (padding wastes <= 2x).

  Greedy from the top: the largest remaining width W opens a bucket of every width >= W/2,
  which gives the fewest buckets (hence compiles) under that constraint.
  """
  rest = sorted(set(int(w) for w in widths), reverse=True)
  out = []
  while rest:
    top = rest[0]
    out.append(sorted(w for w in rest if 2 * w >= top))
    rest = [w for w in rest if 2 * w < top]
  return out[::-1]


def run_mesh() -> Mesh:
  """A 1-d mesh over every device of every process, axis 'runs'."""
  return Mesh(np.array(jax.devices()), ('runs',))


def padded_runs(n: int, n_devices: int) -> int:
  return -(-n // n_devices) * n_devices


def pad_runs(tree, n_total: int):
  """Pads every leaf's leading run axis to n_total by repeating the last run (results dropped)."""
  def pad(x):
    x = np.asarray(x)
    extra = n_total - x.shape[0]
    return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])
  return jax.tree.map(pad, tree)


def to_global(tree, sharding: NamedSharding):
  """Host numpy arrays (identical on every process) -> global jax Arrays sharded on axis 0."""
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: x[idx]), tree)


def to_host(tree):
  """Global jax Arrays -> full numpy arrays on every process."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(tree))


class Compiled(NamedTuple):
  init: Callable
  chunk: Callable
  finish: Callable


@functools.lru_cache(maxsize=None)
def compiled(alg, chunk_steps: int, sharding: NamedSharding, trace_every: int = 0):
  """(init, chunk, finish) jitted and vmapped over runs; cached per algorithm.

  chunk(state, data) -> (state, trace): `chunk_steps` steps; with trace_every > 0 (a divisor of
  chunk_steps) it also returns alg.trace(state, data) after every trace_every steps, stacked on
  axis 1, else an empty dict. finish(state, data) -> (exported, dense, extras): the algorithm's
  export, dense_model and extras (algorithms.Algorithm; their defaults return None / {}, which the
  engine passes on as None / {}) in ONE program, so a bucket compiles three executables, not five
  (each is a pure function of the final state: fusing them changes no number, tests/test_cache.py).
  """

  def steps(state, data, n):
    body = lambda s, _: (alg.step(s, data), None)
    return jax.lax.scan(body, state, None, length=n)[0]

  def one_chunk(state, data):
    if not trace_every:
      return steps(state, data, chunk_steps), {}
    def block(s, _):
      s = steps(s, data, trace_every)
      return s, alg.trace(s, data)
    return jax.lax.scan(block, state, None, length=chunk_steps // trace_every)

  init = jax.jit(jax.vmap(alg.init), out_shardings=sharding)
  chunk = jax.jit(jax.vmap(one_chunk), out_shardings=sharding, donate_argnums=0)

  def finish(state, data):
    return alg.export(state, data), alg.dense_model(state, data), alg.extras(state, data) or {}

  return Compiled(init, chunk, jax.jit(jax.vmap(finish)))


def fingerprint(alg, cells, n_total: int) -> str:
  blob = json.dumps([repr(alg), [list(c) for c in cells], n_total, jax.device_count()])
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


# [reliab] checkpoints are read and written by results.save_checkpoint / load_checkpoint (O_NOFOLLOW,
# stamped with the run's fingerprint, refused when another run or another tool wrote them).
def _save_checkpoint(path: str, host_state, trace: Dict, chunks_done: int, fp: str, run_fp: Optional[str] = None):
  """Atomically writes the run state and the trace recorded so far ({} when not tracing)."""
  results.save_checkpoint(path, jax.tree.leaves(host_state), trace, chunks_done, fp, run_fp)


def _load_checkpoint(path: str, like, fp: str, run_fp: Optional[str] = None):
  """Returns (host_state, trace, chunks_done), or None if absent or another run's or program's."""
  like_leaves, treedef = jax.tree.flatten(like)
  got = results.load_checkpoint(path, like_leaves, fp, run_fp)
  if got is None:
    return None
  return jax.tree.unflatten(treedef, got[0]), got[1], got[2]


class Outcome(NamedTuple):
  """Host results of one program, each with leading axis len(cells).

  exported: (coeffs (n, K), factors (n, K, d)) with K a multiple of the bucket (component i of
  block k is real iff i < width), or None. dense: (n, d, ..., d) model tensors for algorithms
  whose model is not a CP tensor, or None. extras: dict name -> (n,) per-run scalars for the row.
  """
  state: Any
  exported: Any
  dense: Any
  extras: Dict
  wall_s: float
  trace: Dict = {}  # name -> (n, T, ...) values of alg.trace after every trace_every steps


def run_program(alg, data: algorithms.RunData, cells: Sequence, *, chunk_steps: int,
                checkpoint_path: Optional[str] = None, checkpoint_every_s: float = 60.0,
                is_writer: bool = True, label: str = '', trace_every: int = 0,
                on_chunk: Optional[Callable[[int], None]] = None, init_state=None,
                run_fingerprint: Optional[str] = None):
  """Runs every cell of one program to completion.

  data: host RunData with leading axis len(cells). trace_every > 0 records alg.trace every
  that many steps (it must divide chunk_steps). init_state: a host RunState (leading axis len(cells))
  to continue from instead of alg.init (no checkpoint is then read or written). With a checkpoint
  path, the final state is checkpointed before returning, so that a kill while the caller finishes
  the program (rows, params) resumes from here. run_fingerprint: results.config_fingerprint of the run
  (config and input files), stamped on its checkpoints: a checkpoint of another run is not resumed.
  Returns an Outcome.
  """
  n = len(cells)
  mesh = run_mesh()
  sharding = NamedSharding(mesh, P('runs'))
  n_total = padded_runs(n, mesh.size)
  if trace_every and chunk_steps % trace_every:
    raise ValueError(f'trace_every={trace_every} must divide chunk_steps={chunk_steps}')
  init_fn, chunk_fn, finish_fn = compiled(alg, chunk_steps, sharding, trace_every)
  gdata = to_global(pad_runs(data, n_total), sharding)
  t0 = time.time()
  if init_state is not None:
    state, checkpoint_path = to_global(pad_runs(init_state, n_total), sharding), None
  else:
    state = init_fn(gdata)
  n_chunks = -(-alg.steps // chunk_steps)
  start = 0
  fp = fingerprint(alg, cells, n_total) + f'-t{trace_every}-c{chunk_steps}'
  traces = []  # host trace of each chunk so far, each name -> (n_total, T_chunk, ...)
  if checkpoint_path:
    got = _load_checkpoint(checkpoint_path, to_host(state), fp, run_fingerprint)  # [reliab] run_fingerprint
    if got is not None:
      state, start = to_global(got[0], sharding), got[2]
      traces = [got[1]] if got[1] else []
      logging.info('%s: resumed from checkpoint after %d/%d chunks', label, start, n_chunks)
  joined = lambda: {k: np.concatenate([t[k] for t in traces], axis=1) for k in (traces[0] if traces else {})}
  last_ckpt = time.time()
  ran = False
  for k in range(start, n_chunks):
    ran = True
    state, tr = chunk_fn(state, gdata)
    if trace_every:
      traces.append(to_host(tr))
    if on_chunk is not None:
      on_chunk(k)
    status, steps = to_host((state.status, state.step))
    live = (status[:n] == algorithms.RUNNING) & (steps[:n] < alg.steps)
    done = k + 1
    elapsed = time.time() - t0
    eta = elapsed / max(done - start, 1) * (n_chunks - done)
    logging.info('%s: chunk %d/%d, step %d/%d, %d/%d runs live, %.1fs elapsed, ETA %.1fs',
                 label, done, n_chunks, min(done * chunk_steps, alg.steps), alg.steps,
                 int(live.sum()), n, elapsed, eta if live.any() else 0.0)
    if not live.any():
      break
    if checkpoint_path and time.time() - last_ckpt >= checkpoint_every_s:
      host_state = to_host(state)
      if is_writer:
        _save_checkpoint(checkpoint_path, host_state, joined(), done, fp, run_fingerprint)  # [reliab]
      last_ckpt = time.time()
  exported, dense, extras = to_host(finish_fn(state, gdata))
  host_state = to_host(state)
  if checkpoint_path and ran and is_writer:  # chunks_done = n_chunks: a resume goes straight to finishing
    _save_checkpoint(checkpoint_path, host_state, joined(), n_chunks, fp, run_fingerprint)  # [reliab]
  wall = time.time() - t0
  cut = lambda t: None if t is None else jax.tree.map(lambda x: x[:n], t)
  return Outcome(cut(host_state), cut(exported), cut(dense), cut(extras), wall, cut(joined()))


def remove_checkpoint(path: Optional[str]):
  results.remove_checkpoint(path)  # [reliab] only a checkpoint this tool wrote, never through a link
