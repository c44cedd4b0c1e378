"""The sweep planner: which compiled programs a config needs, which runs each holds, and their inputs.

A program is one (algorithm structure, task, d, width bucket) with its runs stacked on a leading axis:
every (width, seed, axis value) cell of the bucket. Cell axes (config.axes, ranks, alphas) are split
three ways:
- common axes (fields no algorithm claims: rank, target fields) change T*: separate target sets;
- an algorithm's axes whose values are leaves of its algorithm value (lr, init_scale, alpha, reg,
  beyond_lazy.reinit_threshold, ...: the traced hyperparameters) are a vmapped axis of ONE program per
  width bucket: its runs carry their own leaves;
- the other axes (a static choice such as beyond_lazy.epoch_length, or a field of the task such as
  num_samples) give one program per value.
Widths are grouped in buckets whose largest width is at most config.bucket_ratio (default 2) times the
smallest (`bucket_widths`), or for a one-program algorithm (lazy_exact) the whole grid is one program
whose runs are the seeds. With config.pad_dims an algorithm whose spec has pads_dims (gd, beyond_lazy;
implicit loss) builds every d's program at d = max(dims) (`Program.pad_dim`): its T*'s factors are
zero-padded and RunData.dim_mask marks the real coordinates, so every d runs the same compiled
program (jit caches by shape). Every program's memory is estimated and checked before anything runs
(`check_memory`).
"""

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

from overparam import config_lib, core, memory, network, registry, targets, tensors
from overparam.errors import ConfigError


def bucket_widths(widths: Sequence[int], ratio: float = 2.0) -> List[List[int]]:
  """Groups widths so each bucket's largest width is <= ratio x its smallest (padding wastes <= ratio x;
  config.bucket_ratio, default 2).

  Greedy from the top: the largest remaining width W opens a bucket of every width >= W/ratio,
  which gives the fewest buckets (hence compiles) under that constraint.
  """
  rest = sorted(set(int(w) for w in widths), reverse=True)
  out = []
  while rest:
    top = rest[0]
    out.append(sorted(w for w in rest if ratio * w >= top))
    rest = [w for w in rest if ratio * w < top]
  return out[::-1]


class Program(NamedTuple):
  """One compiled program of a sweep (its runs' inputs are built by `run_data`).

  name, spec: the algorithm. task: core.Task. dim: d. widths: the bucket's widths (the grid for a
  one-program algorithm, `one`). common: the common axis values (its target set). values: the
  program-level axis values (common ones and the algorithm's non-batched ones); configs[v], algs[v],
  run_values[v]: the config, algorithm value and batched axis values of value combination v (one
  entry when the program has no batched axis). tag: the program's part of file names. pad_dim: None,
  or the d its program is built at (config.pad_dims: max(dims), at every d, so that every d's data
  has one structure and shape: zero-padded factors, dim_mask).
  """
  name: str
  spec: registry.AlgorithmSpec
  task: core.Task
  dim: int
  widths: Tuple[int, ...]
  one: bool
  common: Dict
  values: Dict
  configs: Tuple
  algs: Tuple
  run_values: Tuple
  tag: str
  pad_dim: Optional[int] = None

  @property
  def bucket(self) -> int:
    return max(self.widths)

  @property
  def built_dim(self) -> int:
    """The d its program is built at (pad_dim, else dim)."""
    return self.pad_dim or self.dim

  @property
  def checkpoint_name(self) -> str:
    return f'{self.name}{self.tag}_l{self.task.order}_d{self.dim}_B{self.bucket}.npz'

  @property
  def label(self) -> str:
    pad = f' (built at d={self.pad_dim})' if self.pad_dim and self.pad_dim != self.dim else ''
    return f'{self.name}{self.tag} l={self.task.order} d={self.dim}{pad} widths={list(self.widths)}'

  def cells(self, seeds: Sequence[int]) -> List[Tuple[int, int, int]]:
    """Every (width, seed, value index) cell of the program."""
    return [(m, s, v) for m in self.widths for s in seeds for v in range(len(self.run_values))]

  def all_values(self, v: int) -> Dict:
    """Every axis value of combination v (program-level and batched)."""
    return {**self.values, **self.run_values[v]}


def _tag_value(v) -> str:
  return repr(v) if isinstance(v, float) else str(v)


def file_tag(c, values: Dict) -> str:
  """Part of checkpoint/params/trajectory names that makes them unique per cell-axis value:
  `_r<rank>` (rank axis), `_<field><value>` (other axes, in order), `_a<alpha>` (alpha axis)."""
  tag = ''
  for field, _ in config_lib.axes_of(c):
    v = values.get(field)
    if v is None:
      continue
    if field == 'rank':
      tag += f'_r{v}'
    elif field == 'alpha':
      continue
    else:
      tag += f'_{field}{_tag_value(v)}'
  if values.get('alpha') is not None and any(f == 'alpha' for f, _ in config_lib.axes_of(c)):
    tag += f'_a{values["alpha"]:g}'
  return tag


def _algorithm(c, name: str, task: core.Task):
  spec = registry.get(name)
  alg = config_lib.algorithm_of(c, name)
  return spec.adapt(alg, task) if spec.adapt is not None else alg


def _families(cc, name: str):
  """The algorithm's value combinations under the common config cc, grouped into program families:
  [(task, program-level values, [(config, values of the batched fields, algorithm value)])]."""
  combos = config_lib.algorithm_configs(cc, name)
  by_task: Dict = {}
  for ca, vals in combos:
    task = config_lib.task_of(ca)
    by_task.setdefault(task, []).append((ca, vals, _algorithm(ca, name, task)))
  out = []
  for task, members in by_task.items():
    algs = type(members[0][2]).unify([m[2] for m in members])
    groups: Dict = {}
    for (ca, vals, _), alg in zip(members, algs):
      groups.setdefault(jax.tree.structure(alg), []).append((ca, vals, alg))
    for group in groups.values():
      batched = {f for f in group[0][1] if len({_key(m[1][f]) for m in group}) > 1} if len(group) > 1 else set()
      prog_values = {f: v for f, v in group[0][1].items() if f not in batched}
      out.append((task, prog_values, [(ca, {f: vals[f] for f in batched}, alg) for ca, vals, alg in group]))
  return out


def _key(v):
  return repr(v)


def pads(c, spec: registry.AlgorithmSpec, task: core.Task) -> bool:
  """Whether this algorithm's programs are built at d = max(config.dims) (config.pad_dims, an
  algorithm whose spec has pads_dims, width buckets, the implicit loss)."""
  return bool(c.get('pad_dims', False) and spec.pads_dims and not spec.is_one_program(task)
              and task.loss == 'implicit')


def plan(c) -> List[Program]:
  """Every program of the sweep, in run order: common axis values, d, algorithm, family, bucket."""
  ratio = float(c.get('bucket_ratio', 2.0))
  out = []
  for cc, common in config_lib.common_configs(c):
    for dim in c.dims:
      for name in c.algorithms:
        spec = registry.get(name)
        for task, prog_values, members in _families(cc, name):
          values = {**common, **prog_values}
          one = spec.is_one_program(task)
          grid = config_lib.widths_of(c, name)
          groups = [sorted(set(int(w) for w in grid))] if one else bucket_widths(grid, ratio)
          pad_dim = max(c.dims) if pads(c, spec, task) else None  # max(dims) too: dim_mask of ones, one structure
          for ws in groups:
            algs = tuple(spec.grid(a, ws) if one else a for _, _, a in members)
            out.append(Program(name=name, spec=spec, task=task, dim=dim, widths=tuple(ws), one=one, common=common,
                               values=values, configs=tuple(m[0] for m in members), algs=algs,
                               run_values=tuple(m[1] for m in members), tag=file_tag(cc, {**values}),
                               pad_dim=pad_dim))
  return out


def program_bytes(prog: Program, runs: int, dtype_bytes: int) -> int:
  """Bytes of one program with `runs` runs per device (memory.program_bytes of its first value)."""
  rank = prog.configs[0].rank
  return memory.program_bytes(prog.spec, prog.algs[0], prog.task, prog.built_dim, prog.bucket, rank, runs,
                              dtype_bytes, widths=prog.widths if prog.one else ())


def runs_of(prog: Program, num_seeds: int) -> int:
  """Runs in the program: cells, or for a one-program algorithm seeds x value combinations."""
  per = 1 if prog.one else len(prog.widths)
  return per * num_seeds * len(prog.run_values)


def program_runs(prog: Program, cells):
  """The runs the engine gets for `cells`: the cells, or for a one-program algorithm one run per
  (seed, value) at the bucket width (its widths are read off that one run)."""
  return sorted({(prog.bucket, s, v) for _, s, v in cells}) if prog.one else cells


def device_need(c, prog: Program):
  """(runs per device, bytes) of one program as check_memory counts them: on a CPU every local device
  shares the host's memory, so all of a program's runs count against it."""
  devices = jax.local_devices()
  share = 1 if devices[0].platform == 'cpu' else len(devices)
  runs = math.ceil(runs_of(prog, c.num_seeds) / share)
  return runs, program_bytes(prog, runs, 8 if c.x64 else 4)


def check_memory(c, programs: Sequence[Program], limit_bytes: int = 0):
  """Raises ConfigError naming the sizes if any program of the sweep will not fit (device_need).

  limit_bytes > 0 (or config.memory_gb > 0) replaces the detected free memory of one device.
  """
  limit = limit_bytes or (int(c.memory_gb * 2 ** 30) if c.memory_gb > 0 else memory.available_bytes())
  for prog in programs:
    runs, need = device_need(c, prog)
    if need > limit:
      detail = prog.spec.memory_detail
      what = f', {detail(prog.algs[0], prog.task, prog.built_dim, prog.bucket)}' if detail else ''
      raise ConfigError(
          f'config: the {prog.name} program for d={prog.dim}, widths {list(prog.widths)} ({runs} runs per device{what}) '
          f'needs about {need / 2 ** 30:.3g} GiB > {limit / 2 ** 30:.3g} GiB available; reduce config.num_seeds, '
          f'config.widths or config.dims, use more devices, or set config.memory_gb')


def _samples_of(c, t: tensors.Target, seed: int, target_sq):
  """(the fixed training set as host network.Samples, or None when online; the samples key)."""
  key = network.sample_key(seed)
  if c.online:
    return None, np.asarray(key)
  dim = t.factors.shape[1]
  s = network.draw(key, 0, int(c.num_samples), dim, np.asarray(t.coeffs), np.asarray(t.factors), c.order,
                   float(c.label_noise), np.sqrt(np.asarray(target_sq)), config_lib.dtype_of(c))
  return jax.tree.map(np.asarray, s), np.asarray(key)


def run_data(prog: Program, runs, seed_targets: Dict[int, tensors.Target]) -> core.RunData:
  """Host RunData of `runs` [(width, seed, value index)], stacked on a leading run axis.

  seed_targets: T* per seed as the algorithm fits it (targets.scaled_target for scale-free ones).
  loss = 'samples': every run also gets its samples key and, unless online, its fixed training set
  (batch 0, drawn here on the host, the same on any device count). prog.pad_dim: T*'s factors are
  zero-padded to pad_dim coordinates and every run gets dim_mask (1 on the real d).
  """
  c = prog.configs[0]
  dt = np.dtype(config_lib.dtype_of(c))
  dense = prog.task.loss == 'dense' or prog.algs[0].needs_dense_target
  per_seed = {}  # what depends on the seed alone: computed once per seed
  rows = []
  for width, seed, v in runs:
    if seed not in per_seed:
      t = seed_targets[seed]
      target_sq = targets.sq_norm(t, prog.task.order, dt)
      samples = _samples_of(c, t, seed, target_sq) if prog.task.loss == 'samples' else (None, None)
      _, init_key, reinit_key = targets.seed_keys(seed)
      t = targets.dense_of(t, prog.task.order) if dense else t
      if prog.pad_dim:  # the implicit loss: a factored target (planner.pads)
        t = t._replace(factors=np.pad(np.asarray(t.factors), ((0, 0), (0, prog.pad_dim - prog.dim))))
      per_seed[seed] = (t, np.asarray(init_key), np.asarray(reinit_key), target_sq, samples)
    t, init_key, reinit_key, target_sq, (samples, sample_key) = per_seed[seed]
    dim_mask = (np.arange(prog.pad_dim) < prog.dim).astype(dt) if prog.pad_dim else None
    rows.append(core.RunData(
        init_key=init_key, reinit_key=reinit_key, mask=(np.arange(prog.bucket) < width).astype(dt),
        width=np.asarray(width, dt), target=t, target_sq=target_sq,
        stop_eps=np.asarray(config_lib.stop_eps(prog.configs[v]), dt), samples=samples, sample_key=sample_key,
        dim_mask=dim_mask))
  return jax.tree.map(lambda *xs: np.stack(xs), *rows)


def run_algorithm(prog: Program, runs):
  """The program's algorithm value with one leaf row per run (the run's value combination)."""
  dt = np.dtype(config_lib.dtype_of(prog.configs[0]))
  return core.stack_leaves([prog.algs[v] for _, _, v in runs], dt)

