r"""alpha-scaling (Chizat, Oyallon and Bach 2019): from rich to lazy training at one width.

Provenance. alpha-scaling is from Chizat, Oyallon and Bach, "On Lazy Training in Differentiable
Programming" (NeurIPS 2019), not from the tensor papers: there, lazy training "is due to a choice of
scaling, often implicit, that makes the model behave as its linearization around the initialization",
and a model scaled by alpha with its loss divided by alpha^2 trains lazily as alpha grows, if its output
is close to zero at initialization. This project's choices: the centred model T(W0) + alpha (T(W) - T(W0))
(so every alpha starts from the same tensor T(W0)), one step size for every alpha, and the tensor loss.
What this config measures is therefore that transition on this problem, not a result of the 2020
tensor paper (whose lazy regime is defined by the linearization, `lazy` / `lazy_exact`).

  python launch.py --config=configs/alpha_scaling.py --workdir=workdirs/alpha_scaling

Plain GD on the centred model T(W0) + alpha (T(W) - T(W0)) with the loss divided by alpha^2, for alpha
from 1e-2 to 1e4 (`alphas`: one cell per value, rows carry `alpha`; alpha is a traced hyperparameter, so
every value runs in ONE vmapped gd program), at d = 12, m = 16: a width where
GD (alpha = 1) fits the rank-3 target but the lazy model cannot (its threshold at d = 12 is m = 31).
`lazy` and `lazy_exact` give the alpha -> infinity limit. figures/alpha_scaling.png: rel_error,
movement ||W - W0|| / ||W0|| and the linearization gap versus alpha. Expected: alpha = 1 fits T*; from
alpha ~ 3 on the error is the lazy optimum's, movement and linearization gap fall like 1 / alpha.

One step size serves every alpha: init_scale = 1 puts lambda_max(J^T J) near 20, so lr = 0.02 runs the
lazy (large alpha) dynamics at about 1 / lambda_max. Below alpha = 1 the curvature grows like
alpha^{-3/2} (the weights must grow to fit (T* - T(W0)) / alpha) and GD at this lr diverges for
alpha <~ 0.1: those rows are `diverged` (rel_error null), marked on the figure.

Expected run time: 18 s measured on 2 CPU cores at load 2.1-2.4 (4 seeds; 0.53 GB peak RSS).
"""

from overparam import config_lib


def get_config():
  c = config_lib.base_config()
  c.algorithms = ('gd', 'lazy', 'lazy_exact')
  c.order = 3
  c.dims = (12,)
  c.rank = 3
  c.widths = (16,)
  c.num_seeds = 4
  c.alphas = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
  c.parametrization = 'cp'
  c.init_scale = 1.0
  c.lr = 0.02
  c.steps = 4000
  c.chunk_steps = 500
  c.eps = 1e-2
  c.x64 = True  # at alpha = 1e4, T(W) - T(W0) is ~1e-4 of T(W0): float32 would cancel it
  c.save_params = False
  return c
