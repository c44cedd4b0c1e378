r"""Beyond lazy, m*(d): the smallest width that fits an order-3, rank-3 target, for d from 8 to 1,000.

  python launch.py --config=configs/beyond_lazy.py --workdir=workdirs/beyond_lazy

Two arms in one sweep on the same targets and inits (docs/DESIGN.md section 4):
  beyond_lazy  a reconstruction of the paper's variant of GD (README "Beyond lazy": provenance;
               overparam/beyond_lazy_gd.py: 2-homogeneous components, init 1e-3 * Unif(S^{d-1}),
               re-initialization of the components that did not grow by an epoch start, growing
               epochs; config.beyond_lazy.*, defaults in config_lib.py),
  gd           plain GD on Eq. (1) (cp parametrization) from a small init (0.3), lr 0.05.
Both use the implicit loss, O(m^2 d + m r d) per step, which is what makes d = 1,000 cheap.
summary.json holds m*(d) per arm and the power-law exponent of m* against d (`exponents`,
versus = dim); figures/m_star_vs_dim.png plots both with the fits. Over this d range the lazy
threshold grows like d^{l-1} = d^2 (configs/lazy_threshold.py: C(d+2, 3)/d ~ d^2/6, i.e. ~170,000
components at d = 1,000); the beyond-lazy arm's m* stays flat (fitted exponent ~0; the claim is
"below 0.3"). Random unit a_j in low d are correlated (|cos| ~ 1/sqrt(d)), so small d is not easier.

eps = 0.05: plain gd converges slowly near its optimum and its float32 in-loop error estimate
fluctuates by ~0.3% at rel_error 1e-2, so at eps = 1e-2 runs that stopped "converged" report a
float64 rel_error a hair above eps; at 0.05 both arms are measured cleanly. A failed run mostly
misses a whole component (rel_error ~0.5), so the threshold depends little on eps.

Quick variant (`configs/beyond_lazy.py:quick`, seconds): d = 8, 32, 2 seeds, widths 3, 4, 6, 2,000 steps.

Expected run time: ~5 minutes on 2 CPU cores (8 seeds; measured 2m50s with
--config.num_seeds=4); well under a minute on one GPU.
"""

from overparam import config_lib


def get_config(variant: str = ''):
  """variant: '' (the full config) or 'quick' (a tiny version that runs in seconds)."""
  c = config_lib.base_config()
  c.algorithms = ('beyond_lazy', 'gd')
  c.order = 3
  c.dims = (8, 16, 32, 64, 125, 250, 500, 1000)
  c.rank = 3
  c.target.kind = 'random_unit'
  c.widths = (3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
  c.num_seeds = 8
  c.steps = 8000
  c.chunk_steps = 500
  c.lr = 0.05          # gd
  c.init_scale = 0.3   # gd
  c.eps = 0.05
  if variant == 'quick':
    c.dims, c.num_seeds, c.widths, c.steps = (8, 32), 2, (3, 4, 6), 2000
  elif variant:
    raise ValueError(f"configs/beyond_lazy.py: unknown variant {variant!r} (use 'quick' or none)")
  return c
