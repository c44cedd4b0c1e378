r"""The network view: how many samples each regime needs to learn T* (loss = samples).

  python launch.py --config=configs/network.py --workdir=workdirs/network

MEASURED_PLACEHOLDER
"""

from overparam import config_lib

N_GRID = (32, 45, 64, 91, 128, 181, 256, 512, 1024)


def get_config():
  c = config_lib.base_config()
  c.algorithms = ('lazy_exact', 'beyond_lazy', 'gd')
  c.order = 3
  c.dims = (8, 12, 16)
  c.rank = 2
  c.target.kind = 'random_unit'
  c.loss = 'samples'
  c.num_samples = N_GRID[0]
  c.axes = ('num_samples=' + ','.join(str(n) for n in N_GRID),)
  c.widths = (4,)                       # gd and beyond_lazy: m = 2r
  c.algorithm_widths.lazy_exact = (64,)  # above the lazy width C(d+2,3)/d at every d (53 at d = 16)
  c.lazy.symmetric_init = True          # T(W0) = 0: the kernel regression starts from the zero function
  c.num_seeds = 4
  c.steps = 4000
  c.chunk_steps = 500
  c.lr = 0.05                           # gd, cp parametrization from init 0.3
  c.init_scale = 0.3
  c.beyond_lazy.lr = 0.05               # 0.2 (its tensor default) diverges at small n (see docstring)
  c.eps = 0.05                          # judges the population error; runs stop at train_error < eps/10
  c.x64 = True                          # lazy_exact near n = C(d+2,3) needs float64 (lazy.py)
  c.save_params = False
  return c
