"""Helpers shared by the test modules (no test module imports another): independent numpy oracles,
the tiny sweep config, and real launches of launch.py in a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np

from overparam import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def np_outer_cp(c, v, order):
  """Independent oracle: sum_i c_i v_i (x) ... (x) v_i with explicit outer products."""
  out = 0.0
  for ci, vi in zip(c, v):
    t = vi
    for _ in range(order - 1):
      t = np.multiply.outer(t, vi)
    out = out + ci * t
  return out


def tiny_config(**overrides):
  c = config_lib.base_config()
  c.algorithms = ('gd',)
  c.order, c.dims, c.rank = 3, (6,), 2
  c.widths = (2, 3, 4)
  c.num_seeds = 2
  c.steps, c.chunk_steps = 120, 30
  c.lr, c.init_scale, c.eps = 0.05, 0.3, 0.05
  c.checkpoint_every_s = 0.0
  for k, v in overrides.items():
    c[k] = v
  return c


def load_rows(workdir):
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    return [json.loads(line) for line in f]


CLI = ['--config=configs/default.py', '--config.x64=False', '--config.dims=(6,)', '--config.rank=2', '--config.widths=(2,3,5)',
       '--config.num_seeds=3', '--config.steps=90', '--config.chunk_steps=30']


def default_fusion_emitters(env):
  """`env` with XLA:CPU's default (MLIR) fusion emitters, which tests/conftest.py turns off to compile
  faster. For launches that test a bit-identity that depends on code generation: float64 rows across
  device counts (BUILD.md) are identical with those emitters, not with the classic ones."""
  flags = [f for f in env.get('XLA_FLAGS', '').split() if not f.startswith('--xla_cpu_use_fusion_emitters')]
  return dict(env, XLA_FLAGS=' '.join(flags + ['--xla_cpu_use_fusion_emitters=true']))


def launch(workdir, *extra, env=None, **kw):
  e = dict(os.environ, JAX_PLATFORMS='cpu', **(env or {}))
  # gd only, unless the test picks its own algorithms
  algs = [] if any(a.startswith('--config.algorithms') for a in extra) else ['--config.algorithms=("gd",)']
  return subprocess.Popen([sys.executable, 'launch.py', *CLI, *algs, f'--workdir={workdir}', *extra], cwd=ROOT,
                          env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(p, timeout=300):
  out, err = p.communicate(timeout=timeout)
  return p.returncode, err
