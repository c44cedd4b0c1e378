r"""Lazy (NTK) threshold, order 3: the smallest width m*(d) at which the lazy model fits T*.

  python launch.py --config=configs/lazy_threshold.py --workdir=workdirs/lazy_threshold

Order 4 is configs/lazy_threshold_l4.py. For every d = 4..32, `lazy_exact` projects T* onto the
tangent space range(J) at the random init and measures the numerical rank of J, the whole width
grid from one factorization of J per seed (overparam/linearized.py). summary.json holds m*, the
tangent-rank threshold (`tangent_rank_thresholds`: the smallest width whose J has full rank
C(d+l-1, l) in at least half the seeds) and power-law fits of each against d;
figures/lazy_threshold_l3.png overlays the dimension count C(d+l-1, l)/d and its asymptote d^2/3!.
The symmetric init makes T(W0) = 0, so the lazy model fits T* itself; float64 makes the rank
reliable at the threshold (J is nearly square there). eps = 1e-2: just below the threshold the
projection misses k >= 1 of the C(d+l-1, l) directions and its error, ~sqrt(k / C(d+l-1, l)), was
>= 0.03 in every run measured.

`lazy` (GD with Nesterov momentum, step 1 / lambda_max(J^T J), on the jax.linearize model) is
opt-in: --config.algorithms='("lazy_exact","lazy")' (with --config.dims up to 24 it took ~15
minutes before; at d = 32 it runs 4,000 steps on dense d^3 tensors below the threshold). Where a
grid width makes m d = C(d+l-1, l) exactly (d = 4, m = 5; d = 16, m = 51), J is square and `lazy`
GD did not reach eps within `steps` (error 0.03..0.07 after 4,000 steps): its m* is the next grid
width while `lazy_exact`'s equals the rank threshold.

m* is resolved to the width grid (ratio ~1.2). C(d+2, 3)/d = (d+1)(d+2)/6 has local slope
d/(d+1) + d/(d+2) (1.61 at d = 6, 1.91 at d = 32) and reaches d^2 only asymptotically, so the fitted
exponent of m* over d = 4..32 is below 2 (configs/default.py: 1.74 over d = 6..32).

Measured: m* = 5, 10, 15, 31, 54, 79, 114, 166, 200 at d = 4, 6, 8, 12, 16, 20, 24, 28, 32 (the
tangent-rank threshold at every d), exponent 1.79 +- 0.03 against the count's 1.75.

Expected run time: 9 min 21 s measured on 2 CPU cores shared with other jobs (load 2.3-5; 421
CPU-seconds, ~3.5 minutes on 2 free cores); d = 28, 32 take 60% of it.
"""

import numpy as np

from overparam import config_lib


def get_config():
  c = config_lib.base_config()
  c.algorithms = ('lazy_exact',)
  c.order = 3
  c.dims = (4, 6, 8, 12, 16, 20, 24, 28, 32)
  c.rank = 3
  # A geometric grid (ratio ~1.2) covering the thresholds; m* is resolved to this grid.
  c.widths = tuple(int(w) for w in np.unique(np.round(np.geomspace(4, 200, 22))))
  c.num_seeds = 4
  c.target.kind = 'random_unit'
  c.parametrization = 'cp'
  c.init_scale = 1.0
  c.lazy.symmetric_init = True
  c.lazy.momentum = 0.99
  c.steps = 4000
  c.chunk_steps = 500
  c.eps = 1e-2
  c.x64 = True
  c.save_params = False
  return c
