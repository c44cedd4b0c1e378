r"""Default main job: the lazy regime against gradient descent beyond it, on the same targets.

  python launch.py --config=configs/default.py --workdir=workdirs/default

Order-3, rank-3 targets T* = sum_j a_j^{(x)3} (random unit a_j), d = 6, 8, 12, 16, 24, 32, 4 seeds;
every algorithm fits the same T* of each (seed, d) (docs/DESIGN.md section 4):
  lazy_exact   the lazy (NTK) optimum: T* projected onto the tangent space at a random init
               (symmetric init, so T(W0) = 0), with the numerical rank of the Jacobian; its whole
               width grid is one program per d (one factorization of J per seed, linearized.py);
  lazy         (off by default: not cheap on a CPU) gradient descent on the jax.linearize model,
               lazy_exact's user-facing twin (configs/lazy_threshold.py shows they agree); add it with
               --config.algorithms='("lazy_exact","lazy","beyond_lazy","gd")'; it runs its full step
               budget below the threshold on dense d^3 tensors (not measured at d = 32);
  beyond_lazy  a reconstruction of a beyond-lazy variant of GD (small init, re-initialization, growing
               epochs; README "Beyond lazy": what comes from which paper);
  gd           plain GD on the CP model from init scale 0.3.
Each arm runs its own width grid (`algorithm_widths`): the lazy arms a geometric grid 5..200 (20
widths, ratio ~1.21) that covers the dimension count C(d+2, 3)/d ~ d^2/6 (187 at d = 32), gd and
beyond_lazy 2..16 (`widths`; --config.widths changes only theirs, --config.algorithm_widths.lazy_exact
the lazy grid). eps = 0.05 defines m*, the smallest width at which half the seeds reach rel_error < eps.

summary.json: m* per (algorithm, d), per-seed thresholds, power-law fits of m* against d with a
bootstrap over seeds (`exponent_bootstrap`), the tangent-rank threshold. figures/: m_star_vs_dim.png
(the headline: both regimes, fitted slopes, the dimension count), rel_error_vs_width.png and
movement_vs_width.png (every arm, one panel per d), lazy_threshold_l3.png, one
rel_error_vs_width_<algorithm>.png per arm. Measured (docs/RESULTS.md has the tables):

  d                      6     8    12    16    24    32
  lazy_exact m*         11    16    35    51   112   200    exponent 1.74 +- 0.05
  dimension count      9.3  15.0  30.3  51.0 108.3 187.0    (fitted slope 1.79; local 1.61 .. 1.91)
  beyond_lazy m*         3     3     3     3     3     3    exponent 0
  gd m*                  4     4     4     4     4     4    exponent 0


Quick variant (`--config=configs/default.py:quick`): the same arms and fields on d = 6, 8, 2 seeds,
widths 3, 4, 6 (gd, beyond_lazy) and 8, 11, 16 (lazy), 2,000 steps: the whole pipeline (summary,
every figure) in ~15 s, used by the tests and benchmarks. It gives lazy_exact m* = 11, 16 and
beyond_lazy m* = 3, 3 as the main job does; gd's m* at d = 8 needs more than 2 seeds.

Expected run time: 59 s and 1.40 GiB peak RSS, measured on 2 CPU cores from an empty compilation
cache (load average 1.6 at the start; `python -m benchmarks.main_job_vs_floor`, 2026-12-07); its
`--profile`: lazy_exact 2.1, 2.2, 2.9, 4.1, 9.0 and 21.5 s at d = 6 .. 32 (one LAPACK QR per seed and d;
~2 s of each is its compilation), the 12 gd and beyond_lazy programs ~5 s in all (2 of them
compiled), the rest is start-up, targets and figures. The LAPACK floor of the lazy_exact work
(numpy's QR of the same Jacobian shapes) took 24.1 s in the same script: the job is 2.44x its floor.
The GPU-sized version
is configs/lazy_vs_rich.py (order 4: configs/lazy_vs_rich_l4.py).
"""

import numpy as np

from overparam import config_lib

LAZY_WIDTHS = tuple(int(w) for w in np.unique(np.round(np.geomspace(5, 200, 20))))
RICH_WIDTHS = (2, 3, 4, 6, 8, 12, 16)


def get_config(variant: str = ''):
  """variant: '' (the main job) or 'quick' (a tiny version that runs in seconds)."""
  c = config_lib.base_config()
  c.algorithms = ('lazy_exact', 'beyond_lazy', 'gd')
  c.order = 3
  c.dims = (6, 8, 12, 16, 24, 32)
  c.rank = 3
  c.target.kind = 'random_unit'
  c.widths = RICH_WIDTHS
  c.algorithm_widths.lazy_exact = LAZY_WIDTHS
  c.algorithm_widths.lazy = LAZY_WIDTHS
  c.num_seeds = 4
  c.steps = 4000
  c.chunk_steps = 500
  c.parametrization = 'cp'
  c.lr = 0.05          # gd
  c.init_scale = 0.3   # gd's init, and the lazy arms' W0
  c.lazy.symmetric_init = True
  c.lazy.momentum = 0.99
  c.eps = 0.05
  c.x64 = True  # the tangent rank near the lazy threshold needs float64 (linearized.py)
  # gd and beyond_lazy are a few ms of work per program and ~1-3 s of XLA compile: one width bucket
  # (2..16) and one program shared by every d (built at d = 32, each d's data zero-padded) compile 2
  # programs instead of 36 (numbers agree with the unpadded ones to ~1e-14, m* the same).
  c.bucket_ratio = 8.0
  c.pad_dims = True
  if variant == 'quick':
    c.dims, c.num_seeds, c.steps = (6, 8), 2, 2000
    c.widths = (3, 4, 6)
    c.algorithm_widths.lazy_exact = c.algorithm_widths.lazy = (8, 11, 16)  # one bucket; m* 10, 16
  elif variant:
    raise ValueError(f"configs/default.py: unknown variant {variant!r} (use 'quick' or none)")
  return c
