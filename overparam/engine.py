"""The run engine: many runs in one compiled program, sharded over every device, in checkpointed chunks.

A program is one (algorithm structure, task, d, width bucket): all its runs are stacked on a leading
run axis and vmapped, the algorithm's hyperparameter leaves too (so the runs of a hyperparameter axis
share the program), and its `step` is scanned: the same core.Algorithm calls overparam.fit makes.
Widths inside a bucket are padded to the bucket width B with a component mask, so a width-m run
computes what an unpadded width-m run computes. The run axis is padded to a multiple of the device
count and sharded with NamedSharding over a 1-d mesh; in a multi-process job the mesh spans every
process's devices and each process feeds its own shards.

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

from overparam import core, results


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


# Programs compiled() keeps: a sweep reuses a program for confirm's reruns and, with config.pad_dims,
# across d; older programs' executables are released instead of staying resident for the whole sweep.
KEEP_PROGRAMS = 4


def shapes_of(tree):
  """A hashable signature of a tree's structure and leaf shapes and dtypes (compiled's cache key)."""
  leaves, treedef = jax.tree.flatten(tree)
  return str(treedef), tuple((tuple(np.shape(x)), str(getattr(x, 'dtype', None) or np.asarray(x).dtype))
                             for x in leaves)


def _options(opts):
  """compiler_options as a hashable key (sorted items) and back."""
  return None if not opts else tuple(sorted(opts.items()))


@functools.lru_cache(maxsize=KEEP_PROGRAMS)
def compiled(treedef, task: core.Task, chunk_steps: int, sharding: NamedSharding, trace_every: int = 0,
             shapes=None, options=None):
  """(init, chunk, finish) jitted and vmapped over runs, for algorithm values of pytree structure
  `treedef` (their leaves batched on the run axis); cached per structure, task and `shapes` (the
  data's shapes_of: run_program passes it, so that one entry is one program and the last
  KEEP_PROGRAMS programs stay compiled; a static field's value is part of the structure). options:
  ((fn, ((option, value), ...)), ...): jax.jit(compiler_options=...) of fn 'init', 'chunk' or
  'finish' (core.Algorithm.compiler_options).

  init(alg, data) -> state. chunk(alg, state, data) -> (state, trace): `chunk_steps` steps; with
  trace_every > 0 (a divisor of chunk_steps) it also returns alg.trace after every trace_every steps,
  stacked on axis 1, else an empty dict. finish(alg, state, data) -> (exported, dense, extras): the
  algorithm's export, dense_model and extras in ONE program, so a bucket compiles three executables
  (each is a pure function of the final state: fusing them changes no number, tests/test_cache.py).
  """
  del treedef, shapes  # cache keys: jit itself retraces per structure and shape
  opts = {fn: dict(o) for fn, o in (options or ())}

  def steps(alg, state, data, n):
    body = lambda s, _: (alg.step(task, s, data), None)
    return jax.lax.scan(body, state, None, length=n)[0]

  def one_chunk(alg, state, data):
    if not trace_every:
      return steps(alg, state, data, chunk_steps), {}
    def block(s, _):
      s = steps(alg, s, data, trace_every)
      return s, alg.trace(task, s, data)
    return jax.lax.scan(block, state, None, length=chunk_steps // trace_every)

  def finish(alg, state, data):
    return alg.export(task, state, data), alg.dense_model(task, state, data), alg.extras(task, state, data) or {}

  init = jax.jit(jax.vmap(lambda alg, data: alg.init(task, data)), out_shardings=sharding,
                 compiler_options=opts.get('init'))
  chunk = jax.jit(jax.vmap(one_chunk), out_shardings=sharding, donate_argnums=1, compiler_options=opts.get('chunk'))
  return Compiled(init, chunk, jax.jit(jax.vmap(finish), compiler_options=opts.get('finish')))


def program_of(alg, task: core.Task, data: core.RunData, chunk_steps: int, sharding: NamedSharding,
               trace_every: int = 0) -> Compiled:
  """compiled() for these host inputs (alg's leaves and data with a leading run axis): keyed by the
  algorithm's structure, the task and the data's shapes, with the algorithm's compiler_options."""
  one = jax.tree.map(lambda x: x[0], data)
  options = tuple((fn, o) for fn in ('init', 'chunk', 'finish')
                  if (o := _options(alg.compiler_options(task, fn, one))) is not None)
  return compiled(jax.tree.structure(alg), task, chunk_steps, sharding, trace_every, shapes=shapes_of(data),
                  options=options or None)


def fingerprint(alg, task: core.Task, cells, n_total: int) -> str:
  """Identity of one program's computation: the algorithm's structure and (per run) leaves, the task,
  the cells and the device count."""
  leaves, treedef = jax.tree.flatten(alg)
  h = hashlib.sha256(json.dumps([str(treedef), repr(task), [list(c) for c in cells], n_total,
                                 jax.device_count()]).encode())
  for x in leaves:
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]


def _save_checkpoint(path: str, host_state, trace: Dict, chunks_done: int, fp: str, run_fp: Optional[str] = None):
  """Atomically writes the run state and the trace recorded so far ({} when not tracing), stamped with
  the program's and the run's fingerprints (results.save_checkpoint: O_NOFOLLOW, never through a link)."""
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


def run_program(alg, task: core.Task, data: core.RunData, cells: Sequence, *, chunk_steps: int,
                checkpoint_path: Optional[str] = None, checkpoint_every_s: float = 60.0,
                is_writer: bool = True, label: str = '', trace_every: int = 0,
                on_chunk: Optional[Callable[[int], None]] = None, init_state=None, progress_every_s: float = 10.0,
                verbose: bool = False, run_fingerprint: Optional[str] = None, export_dim: Optional[int] = None):
  """Runs every cell of one program to completion.

  alg: an algorithm value whose leaves have a leading run axis (core.stack_leaves); data: host
  RunData with leading axis len(cells). trace_every > 0 records alg.trace every that many steps (it
  must divide chunk_steps). init_state: a host RunState (leading axis len(cells)) to continue from
  instead of alg.init (no checkpoint is then read or written). With a checkpoint path, the final
  state is checkpointed before returning, so that a kill while the caller finishes the program (rows,
  params) resumes from here. log: the progress logger (per chunk). export_dim: a program built at a
  padded d (config.pad_dims) returns its exported factors cut to their first export_dim (real)
  coordinates. Returns an Outcome.
  """
  n = len(cells)
  mesh = run_mesh()
  sharding = NamedSharding(mesh, P('runs'))
  n_total = padded_runs(n, mesh.size)
  if trace_every and chunk_steps % trace_every:
    raise ValueError(f'trace_every={trace_every} must divide chunk_steps={chunk_steps}')
  init_fn, chunk_fn, finish_fn = program_of(alg, task, data, chunk_steps, sharding, trace_every)
  galg = to_global(pad_runs(alg, n_total), sharding)
  gdata = to_global(pad_runs(data, n_total), sharding)
  t0 = time.time()
  if init_state is not None:
    state, checkpoint_path = to_global(pad_runs(init_state, n_total), sharding), None
  else:
    state = init_fn(galg, gdata)
  n_chunks = -(-task.steps // chunk_steps)
  start = 0
  fp = fingerprint(alg, task, cells, n_total) + f'-t{trace_every}-c{chunk_steps}'
  traces = []  # host trace of each chunk so far, each name -> (n_total, T_chunk, ...)
  if checkpoint_path:
    got = _load_checkpoint(checkpoint_path, to_host(state), fp, run_fingerprint)
    if got is not None:
      state, start = to_global(got[0], sharding), got[2]
      traces = [got[1]] if got[1] else []
      logging.info('%s: resumed from checkpoint after %d/%d chunks', label, start, n_chunks)
  joined = lambda: {k: np.concatenate([t[k] for t in traces], axis=1) for k in (traces[0] if traces else {})}
  last_ckpt = last_log = time.time()
  ran = init_state is None and start == 0  # computed here (by init at least): checkpoint the final state
  status, steps = to_host((state.status, state.step))
  for k in range(start, n_chunks):
    if not ((status[:n] == core.RUNNING) & (steps[:n] < task.steps)).any():
      break  # every run is finished (a closed-form solver finishes in init)
    ran = True
    state, tr = chunk_fn(galg, state, gdata)
    if trace_every:
      traces.append(to_host(tr))
    if on_chunk is not None:
      on_chunk(k)
    status, steps = to_host((state.status, state.step))
    live = (status[:n] == core.RUNNING) & (steps[:n] < task.steps)
    done = k + 1
    elapsed = time.time() - t0
    eta = elapsed / max(done - start, 1) * (n_chunks - done)
    loud = verbose or (time.time() - last_log >= progress_every_s and live.any())
    if loud:
      logging.info('%s: chunk %d/%d, step %d/%d, %d/%d runs live, %.1fs elapsed, '
                   'ETA %.1fs', label, done, n_chunks, min(done * chunk_steps, task.steps), task.steps, int(live.sum()),
                   n, elapsed, eta if live.any() else 0.0)
      last_log = time.time()
    if not live.any():
      break
    if checkpoint_path and time.time() - last_ckpt >= checkpoint_every_s:
      host_state = to_host(state)
      if is_writer:
        _save_checkpoint(checkpoint_path, host_state, joined(), done, fp, run_fingerprint)
      last_ckpt = time.time()
  exported, dense, extras = to_host(finish_fn(galg, state, gdata))
  host_state = to_host(state)
  if checkpoint_path and ran and is_writer:  # chunks_done = n_chunks: a resume goes straight to finishing
    _save_checkpoint(checkpoint_path, host_state, joined(), n_chunks, fp, run_fingerprint)
  wall = time.time() - t0
  cut = lambda t: None if t is None else jax.tree.map(lambda x: x[:n], t)
  exported = cut(exported)
  if export_dim is not None and exported is not None:
    exported = (exported[0], exported[1][..., :export_dim])
  return Outcome(cut(host_state), exported, cut(dense), cut(extras), wall, cut(joined()))


def remove_checkpoint(path: Optional[str]):
  """Removes a checkpoint this tool wrote (never through a link; results.remove_checkpoint)."""
  results.remove_checkpoint(path)
