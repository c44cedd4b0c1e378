r"""The network view sized for one GPU: configs/network.py with d = 8..32, a finer n grid, 8 seeds.

  python launch.py --config=configs/network_gpu.py --workdir=workdirs/network_gpu

Same arms, target and stopping rules as configs/network.py (its docstring explains them). Changes:
d = 8, 12, 16, 24, 32 (the kernel count C(d+2, 3) reaches 5,984 at d = 32), n from 32 to 8,192 in
steps of sqrt(2) (n* resolved to a factor 1.41 instead of 2), 8 seeds, lazy_exact at m = 200 (above
the lazy width C(d+2,3)/d = 187 at d = 32, so the tangent space is full at every d and the kernel
regression is exact once n >= C(d+2, 3)), 6,000 steps.

Memory: lazy_exact's J_F at d = 32, n = 8,192 is 8,192 x 6,600 float64 (0.43 GB) per run; with the
Gram matrix and its eigenvectors (memory.check's estimate: 5 n P words) ~2.2 GB per run, ~17 GB for
the 8 seeds of that program.

Expected run time: an estimate, not measured (no GPU was lent to the session that wrote it): the
lazy_exact eigendecompositions of size min(n, 6,600) dominate at d = 32 (seconds each on an H200);
every d adds 51 programs (17 values of n x 3 arms), each a compile plus a run of seconds. Check it at a reduced size on a
CPU first: --config.dims='(8,12)' --config.axes='("num_samples=64,128,256",)' --config.num_seeds=2.
"""

import numpy as np

from configs import network


def get_config():
  c = network.get_config()
  c.dims = (8, 12, 16, 24, 32)
  grid = tuple(int(n) for n in np.unique(np.round(np.geomspace(32, 8192, 17))))
  c.num_samples = grid[0]
  c.axes = ('num_samples=' + ','.join(str(n) for n in grid),)
  c.algorithm_widths.lazy_exact = (200,)
  c.num_seeds = 8
  c.steps = 6000
  return c
