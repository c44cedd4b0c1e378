r"""Lazy versus rich, full version for one GPU: order 3, d = 8..32, 12 seeds.

  python launch.py --config=configs/lazy_vs_rich.py --workdir=workdirs/lazy_vs_rich

configs/default.py (whose docstring explains the arms and the figures) at a larger size: d up to 32,
where the lazy dimension count C(d+2, 3)/d is 187 components against r = 3, and 12 seeds. Order 4 is
configs/lazy_vs_rich_l4.py. The lazy widths are a geometric grid 6..256 (ratio ~1.2, so m* is
resolved to ~20%); gd and beyond_lazy run 2..24.

Memory: lazy_exact holds J (C(d+2,3) x m(d+1) float64) per run; at d = 32, width 256 that is ~2 GB
per run with its Gram matrix (lazy.exact_bytes_per_run), ~70 GB for the widest program (3 widths x
12 seeds): it fits one 80+ GB GPU and is refused up front (an `error:` line naming the sizes) on less;
then lower num_seeds or drop d = 32.

Checked at a reduced size on 2 shared CPU cores: --config.dims='(8,12)' --config.num_seeds=2
--config.steps=2000 took 5m20s; m* = 15, 32 for both lazy and lazy_exact, 3, 3 for beyond_lazy,
8, 5 for gd (2 seeds: gd's m* is noisy).

Expected run time: an estimate, not measured (no GPU was available): ~10-20 minutes on one H100/H200.
Method: ~200 programs (4 arms x 5 d x 8-11 width buckets) at ~1-3 s of compilation each, plus, for
lazy_exact at d = 24, 32, float64 eigendecompositions of Gram matrices of size up to 5,984 (d = 32),
~1 s each on a GPU, ~40 per bucket; `lazy` GD below the threshold runs its full 8,000 steps.
"""

import numpy as np

from overparam import config_lib


def get_config():
  c = config_lib.base_config()
  c.algorithms = ('lazy_exact', 'lazy', 'beyond_lazy', 'gd')
  c.order = 3
  c.dims = (8, 12, 16, 24, 32)
  c.rank = 3
  c.target.kind = 'random_unit'
  c.widths = (2, 3, 4, 5, 6, 8, 12, 16, 24)
  lazy_widths = tuple(int(w) for w in np.unique(np.round(np.geomspace(6, 256, 21))))
  c.algorithm_widths.lazy_exact = lazy_widths
  c.algorithm_widths.lazy = lazy_widths
  c.num_seeds = 12
  c.steps = 8000
  c.chunk_steps = 500
  c.parametrization = 'cp'
  c.lr = 0.05
  c.init_scale = 0.3
  c.lazy.symmetric_init = True
  c.lazy.momentum = 0.99
  c.eps = 0.05
  c.x64 = True
  return c
