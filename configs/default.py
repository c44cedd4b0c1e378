r"""Default main job: the lazy regime against gradient descent beyond it, on the same targets.

  python launch.py --config=configs/default.py --workdir=workdirs/default

Order-3, rank-3 targets T* = sum_j a_j^{(x)3} (random unit a_j), d = 6, 8, 12, 16, 8 seeds; every
algorithm fits the same T* of each (seed, d) (DESIGN.md section 2):
  lazy_exact   the lazy (NTK) optimum: T* projected onto the tangent space at a random init
               (symmetric init, so T(W0) = 0), with the numerical rank of the Jacobian;
  lazy         (off by default: not cheap on a CPU) gradient descent on the jax.linearize model,
               lazy_exact's user-facing twin (configs/lazy_threshold.py shows they agree); add it with
               --config.algorithms='("lazy_exact","lazy","beyond_lazy","gd")' (~10 more minutes);
  beyond_lazy  the paper's variant of GD (small init, re-initialization, growing epochs);
  gd           plain GD on the CP model from init scale 0.3.
Each arm runs its own width grid (`algorithm_widths`): the lazy arms a geometric grid 5..64 (ratio
~1.2) that covers the dimension count C(d+2, 3)/d ~ d^2/6 (51 at d = 16), gd and beyond_lazy 2..16
(`widths`; --config.widths changes only theirs, --config.algorithm_widths.lazy_exact the lazy grid).
d stops at 16 because lazy_exact's cost does: its Gram eigendecompositions are of size
min(C(d+2,3), m(d+1)), and at d = 24 the widths 43..144 alone took ~5 minutes on 2 CPU cores.
eps = 0.05 defines m*, the smallest width at which half the seeds reach rel_error < eps.

summary.json: m* per (algorithm, d), per-seed thresholds, power-law fits of m* against d with a
bootstrap over seeds (`exponent_bootstrap`), the tangent-rank threshold. figures/: m_star_vs_dim.png
(the headline: both regimes, fitted slopes, the dimension count), rel_error_vs_width.png and
movement_vs_width.png (every arm, one panel per d), lazy_threshold_l3.png, one
rel_error_vs_width_<algorithm>.png per arm. Measured: lazy m* = 11, 16, 36, 53 (exponent 1.66),
beyond_lazy m* = 3 and gd m* = 4 at every d. docs/RESULTS.md has the numbers.

Expected run time: about 3 minutes on 2 CPU cores (measured 3m15s with the cores shared, load ~5;
docs/RESULTS.md); the
GPU-sized version is configs/lazy_vs_rich.py (order 4: configs/lazy_vs_rich_l4.py).
"""

import numpy as np

from overparam import config_lib

LAZY_WIDTHS = tuple(int(w) for w in np.unique(np.round(np.geomspace(5, 200, 20))))
RICH_WIDTHS = (2, 3, 4, 6, 8, 12, 16)


def get_config():
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
  c.x64 = True  # the tangent rank near the lazy threshold needs float64 (lazy.py)
  return c
