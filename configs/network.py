r"""The network view: how many samples each regime needs to learn T* (loss = samples).

  python launch.py --config=configs/network.py --workdir=workdirs/network

Learns the same order-3, rank-2 targets T* = sum_j a_j^{(x)3} (random unit a_j) from n samples
x ~ N(0, I_d), y = f_{T*}(x) = <T*, H_3(x)> (noise-free), with the network f_T of overparam/network.py,
for d = 8, 12, 16 and n = 32..1024 (the cell axis config.axes = 'num_samples=...'), 4 seeds; all arms
see the same training set per (seed, n) (nested in n):
  lazy_exact   the lazy (NTK) regime: min-norm least squares on the samples with the network
               linearized at a random symmetric init, m = 64 (above the lazy width C(d+2,3)/d at every
               d, so its tangent space holds every degree-3 <T, H_3(x)>): ridgeless regression with
               the network's tangent kernel;
  beyond_lazy  the beyond-lazy reconstruction (overparam/beyond_lazy_gd.py) on the empirical loss, m = 4;
  gd           plain GD on the cp network from init 0.3, m = 4.
rel_error is the exact float64 population error ||T - T*|| / ||T*||; n* = the smallest n at which half
the seeds reach rel_error < eps = 0.05 (summary.json `sample_thresholds`, fits `sample_exponents`).
Runs stop when the training error is below eps / 10 (config.train_eps = 0). beyond_lazy.lr = 0.05
instead of its tensor default 0.2: the empirical loss is stiffer at small n (heavy-tailed cubic
features), and 0.2 diverged at n = 40, d = 5.

figures/: n_star_vs_dim.png (n* versus d, fitted exponents, per-seed spread, the count C(d+2,3)),
sample_error_vs_n.png (population error versus n per d, per arm), sample_gap_vs_n.png (train dashed,
population solid).

Measured (jax 0.10.2 CPU, float64): 6 min 16 s wall on 2 CPU cores shared with other engineers' jobs
(load average 2-4 during the run; 7 min 3 s in an earlier run at load 4-6; 81 programs,
compile-dominated; both runs gave identical rows). n* (in brackets the per-seed n* min..max):

  | d  | lazy_exact         | beyond_lazy   | gd             | C(d+2,3) |
  |----|--------------------|---------------|----------------|----------|
  | 8  | 128 [128..128]     | 45 [32..64]   | 64 [32..91]    | 120      |
  | 12 | 512 [512..512]     | 64 [45..128]  | 181 [64..256]  | 364      |
  | 16 | 1024 [1024..1024]  | 128 [91..181] | 181 [91..256]  | 816      |

Fitted exponents of n* versus d (3 points; +- the fit's standard error): lazy_exact 3.03 +- 0.28,
beyond_lazy 1.47 +- 0.43, gd 1.57 +- 0.71 (C(d+2,3) over the same d: 2.77). lazy_exact misses T* at
every grid n below C(d+2,3) (population error 0.50, 0.72, 0.77 at the grid point just below, while
it interpolates the training set: train_error ~1e-14) and recovers it exactly (~1e-13) at every n
above, for every seed; its n* is the grid point above the count. The grid (ratio ~1.4 up to 256, 2
above) limits the resolution: the exponents' uncertainty is dominated by it and by 4 seeds.
docs/RESULTS.md, section "The network view", compares them with the literature.
GPU-sized twin: configs/network_gpu.py.
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
  c.x64 = True                          # lazy_exact near n = C(d+2,3) needs float64 (linearized.py)
  c.save_params = False
  return c
