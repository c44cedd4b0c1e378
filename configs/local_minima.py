r"""Local minima of plain GD: success rate at m = r, 2r, 4r, 8r for orthonormal targets, r = 2..6.

  python launch.py --config=configs/local_minima.py --workdir=workdirs/local_minima

Plain `gd` on Eq. (1) from a small init (0.3) with exactly r components often converges to a bad
local minimum -- two components on the same a_j, another a_j never fitted -- even though the a_j
are orthonormal; with more components the failures disappear. `beyond_lazy` is the second arm: its
re-initialization recycles the components that stall on an already fitted a_j, so it succeeds at
m = r far more often. `ranks` is a cell axis; the widths are the union of {r, 2r, 4r, 8r}, so the
sweep also measures the ratios in between. figures/success_vs_overparam.png: success rate versus
m / r, one line per (arm, r); summary.json: m* per (arm, r) and the fit of m* against r.

A failure leaves an a_j unfitted (rel_error >= 1/sqrt(r) for equal weights), so eps = 0.05 only
separates success from failure.

Quick variant (`configs/local_minima.py:quick`, seconds): r = 2, 3, 4 seeds, 2,000 steps.

Expected run time: ~1.5 minutes on 2 CPU cores (32 seeds; most of it compiling).
"""

from overparam import config_lib


def get_config(variant: str = ''):
  """variant: '' (the full config) or 'quick' (a tiny version that runs in seconds)."""
  c = config_lib.base_config()
  c.algorithms = ('gd', 'beyond_lazy')
  c.order = 3
  c.dims = (20,)
  c.rank = 2
  c.ranks = (2, 3, 4, 6)
  c.target.kind = 'orthonormal'
  c.widths = tuple(sorted({k * r for r in c.ranks for k in (1, 2, 4, 8)}))
  c.num_seeds = 32
  c.steps = 4000
  c.chunk_steps = 500
  c.lr = 0.05
  c.init_scale = 0.3
  c.eps = 0.05
  if variant == 'quick':
    c.ranks, c.num_seeds, c.steps = (2, 3), 4, 2000
    c.widths = tuple(sorted({k * r for r in c.ranks for k in (1, 2, 4, 8)}))
  elif variant:
    raise ValueError(f"configs/local_minima.py: unknown variant {variant!r} (use 'quick' or none)")
  return c
