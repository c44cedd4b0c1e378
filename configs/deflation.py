r"""Deflation: order 4, five orthonormal components of unequal weight, fitted largest first.

  python launch.py --config=configs/deflation.py --workdir=workdirs/deflation

The beyond-lazy algorithm from its small init (config.beyond_lazy.init_scale = 1e-3) fits one
component at a time: a component's direction moves by a tensor power flow whose speed is
proportional to c*_j, so the components lock on the a_j in the order of their weights and the loss
falls in a staircase, one step per c*_j (weights 1, 1/2, 1/4, 1/8, 1/16). Every run's trajectory
(rel_error, and per true component the max |cos| and the weight aligned with it) is saved every
10 steps to trajectories/*.npz; figures/deflation.png shows the loss curves, the aligned weight of
each a_j over time for one run, and the iteration at which each a_j is half fitted versus c*_j for
every run (analysis.fit_steps / fit_order compute the order).

Provenance. The deflation picture (larger components fitted first, then smaller ones) and the
modified gradient flow that provably follows it on orthogonally decomposable tensors are from Ge, Ren,
Wang, Zhou, "Understanding Deflation Process in Over-parametrized Tensor Decomposition" (NeurIPS 2021);
this config uses orthonormal components, their setting. The algorithm run here is this project's
discrete reconstruction of that flow (overparam/beyond_lazy_gd.py: normalized units, re-initialization
threshold above the init scale, its own epoch schedule and defaults, stop at eps), so the staircase and
the fitting order it shows are measurements of the reconstruction, not a check of the 2021 theorem's
rates or constants, and nothing here comes from the 2020 paper's (non-public) Algorithm 1.

Plain gd (cp parametrization from init 0.3) also deflates but, at order 4, its escape from the small
init is ~100x slower (the direction speed scales with the component's size): add it with
--config.algorithms='("beyond_lazy","gd")' --config.steps=40000 to compare.

Expected run time: ~10 seconds on 2 CPU cores.
"""

from overparam import config_lib


def get_config():
  c = config_lib.base_config()
  c.algorithms = ('beyond_lazy',)
  c.order = 4
  c.dims = (100,)
  c.rank = 5
  c.target.kind = 'orthonormal'
  c.target.weights = (1.0, 0.5, 0.25, 0.125, 0.0625)
  c.widths = (10,)
  c.num_seeds = 8
  c.steps = 6000
  c.chunk_steps = 500
  c.trace_every = 10
  c.eps = 0.005
  return c
