r"""Runs every benchmark; prints one line per benchmark, each ending in `ratio=<number>`.

  python -m benchmarks.run --quick          # a few minutes on 2 CPU cores
  python -m benchmarks.run                  # full sizes (~8 minutes on 2 CPU cores)
  python -m benchmarks.run --only loss_bench,sweep_bench --out DIR

Each benchmark runs in its own subprocess (`python -m benchmarks.NAME [--quick]`), so that device
settings and peak memory are its own. stdout carries only the benchmark lines (the lines of each
benchmark's output that end in `ratio=<number>`); a header, progress and the path of the full logs
go to stderr. With --out DIR, each benchmark's full output is written to DIR/NAME.txt and the
benchmark lines to DIR/summary.txt. A benchmark that fails or cannot run (TensorLy missing) prints
`NAME ... ratio=nan` with the reason.

What each ratio means (RESULTS.md has the goals and the measured numbers):
  implicit_vs_dense          dense / implicit loss+gradient time, l=4 d=48 m=128 r=5
  dense_flops                achieved dense loss+gradient FLOP/s / same-script f32 matmul FLOP/s
  beyond_lazy_capability     0.05 / max rel_error, beyond_lazy at l=4 d=10,000 r=5 m=64
  sweep_vs_one_at_a_time     one-at-a-time seconds / one-program sweep seconds (compile included)
  sweep_vs_python_loop       Python step loop seconds / one-program sweep seconds
  peers_vs_tensorly          TensorLy ALS time per solve / beyond_lazy time per solve (compile incl.,
                             cold: a fresh process and an empty compilation cache)
  peers_vs_tensorly_warm_cache  the same, beyond_lazy in a second process reading the compilation cache
  reduce_vs_tensorly         TensorLy ALS (svd init) time per solve / decompose + reduce(rank=r) warm time per
                             solve, 16 noisy rank-3..5 targets (success rates on the line)
  reduce_success             reduce(rank=None) success (rank and residual within 5% of the best) / ALS's
  decompose_warm_vs_parafac  TensorLy parafac(t, 3) / a warm overparam.decompose(t, 6) of the same d = 10,
                             l = 3, rank-3 tensor, calls interleaved (goal >= 0.5: within 2x)
  decompose_many_vs_parafac_loop  a Python loop of parafac over 64 such tensors / decompose_many of the 64
                             (warm; goal >= 4), success rates of all on the line
  decompose_cold             a fresh process to decompose's first answer, compilation cache off / warm
                             disk cache (imports, programs compiled, compile seconds on the line)
  cache_relaunch             first launch / re-launch wall of configs/default.py (quick: :quick) into a
                             fresh workdir, jax's persistent compilation cache shared (goal >= 1.5)
  compile_share              compile seconds (trace + lower + XLA compile) / wall of the first launch
  lazy_linearize_vs_jvp      jvp-every-step time per step / jax.linearize time per step
  alpha_axis_one_program     seconds of one program per alpha value (each compiled anew) / seconds of
                             the alpha axis as one vmapped program (configs/alpha_scaling.py's gd arm)
  lazy_exact_grid_vs_largest lazy_exact over a 14-width grid from one factorization / the largest
                             width alone by the per-width path (l=3 d=16, 4 seeds)
  main_job_vs_floor          configs/default.py from an empty compilation cache / numpy's QR of the
                             same Jacobian shapes (the LAPACK floor of its lazy_exact work), one
                             script, the floor timed before and after (goal <= 2.5; full only)
  memory_model               measured / predicted peak RSS (worst validation size)
  largest_default_program    measured / predicted peak RSS of the largest shipped program that fits
                             the machine (full only); default_py_program: the same for configs/default.py;
                             default_py_preflight: its measured peak / the library's pre-flight estimate + base
"""

import argparse
import os
import re
import subprocess
import sys
import time

from benchmarks import common

# (name, module, extra args, in quick mode?)
BENCHMARKS = (
    ('loss_bench', 'benchmarks.loss_bench', (), True),
    ('capability_bench', 'benchmarks.capability_bench', (), True),
    ('sweep_bench', 'benchmarks.sweep_bench', (), True),
    ('peers_bench', 'benchmarks.peers_bench', (), True),
    ('reduce_bench', 'benchmarks.reduce_bench', (), True),
    ('decompose_bench', 'benchmarks.decompose_bench', (), True),
    ('cache_bench', 'benchmarks.cache_bench', (), True),
    ('lazy_bench', 'benchmarks.lazy_bench', (), True),
    ('lazy_grid', 'benchmarks.lazy_bench', ('--part=grid',), True),
    ('axes_bench', 'benchmarks.axes_bench', (), True),
    ('memory_bench', 'benchmarks.memory_bench', ('--part=model',), True),
    ('memory_largest', 'benchmarks.memory_bench', ('--part=largest',), False),
    ('main_job_vs_floor', 'benchmarks.main_job_vs_floor', (), False),
)
RATIO_LINE = re.compile(r'ratio=([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|nan|inf)\s*$')


def run_one(name, module, extra, quick, out_dir):
  if module in ('benchmarks.peers_bench', 'benchmarks.reduce_bench', 'benchmarks.decompose_bench'):
    try:
      import tensorly  # noqa: F401,PLC0415
    except ImportError:
      return [f'{name} skipped: TensorLy not installed (pip install -r benchmarks/requirements.txt) '
              f'ratio=nan']
  cmd = [sys.executable, '-m', module, *extra] + (['--quick'] if quick else [])
  env = dict(os.environ)
  env['PYTHONPATH'] = common.ROOT + os.pathsep + env.get('PYTHONPATH', '')
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  text = proc.stdout + ('\n--- stderr ---\n' + proc.stderr if proc.stderr.strip() else '')
  if out_dir:
    with open(os.path.join(out_dir, f'{name}.txt'), 'w') as f:
      f.write(f'$ {" ".join(cmd[1:])}\n# {wall:.0f}s, exit {proc.returncode}\n{text}')
  lines = [l.strip() for l in proc.stdout.splitlines() if RATIO_LINE.search(l.strip()) and not l.startswith(' ')]
  if proc.returncode != 0:
    last = (proc.stderr.strip().splitlines() or ['?'])[-1][:200]
    lines.append(f'{name} failed (exit {proc.returncode}): {last} ratio=nan')
  elif not lines:
    lines.append(f'{name} printed no benchmark line ratio=nan')
  print(f'[{name}: {wall:.0f}s]', file=sys.stderr, flush=True)
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true', help='small sizes: a few minutes on 2 CPU cores')
  p.add_argument('--only', default='', help='comma-separated benchmark names (default: all)')
  p.add_argument('--out', default='', help='directory for the full output of each benchmark')
  a = p.parse_args()
  only = [x for x in a.only.split(',') if x]
  known = [b[0] for b in BENCHMARKS]
  for x in only:
    if x not in known:
      p.error(f'--only: unknown benchmark {x!r}; choose from {", ".join(known)}')
  if a.out:
    os.makedirs(a.out, exist_ok=True)
  print(f'# benchmarks.run ({"quick" if a.quick else "full"}) {time.strftime("%Y-%m-%d %H:%M:%S")}; '
        f'{common.machine()}', file=sys.stderr, flush=True)
  summary = []
  for name, module, extra, in_quick in BENCHMARKS:
    if (only and name not in only) or (not only and a.quick and not in_quick):
      continue
    for line in run_one(name, module, extra, a.quick, a.out):
      print(line, flush=True)
      summary.append(line)
  if a.out:
    with open(os.path.join(a.out, 'summary.txt'), 'w') as f:
      f.write('\n'.join(summary) + '\n')
    print(f'# full outputs in {a.out}', file=sys.stderr)


if __name__ == '__main__':
  main()
