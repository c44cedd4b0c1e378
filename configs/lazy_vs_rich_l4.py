r"""Lazy versus rich, order 4, for one GPU: d = 4..16, 12 seeds.

  python launch.py --config=configs/lazy_vs_rich_l4.py --workdir=workdirs/lazy_vs_rich_l4

configs/lazy_vs_rich.py with l = 4: the lazy dimension count C(d+3, 4)/d ~ d^3/24 is 242 components
at d = 16 against r = 3. Plain gd escapes its small init far more slowly at order 4 (the angular
speed of a component scales with its size; configs/deflation.py), hence steps = 20,000; beyond_lazy
and the lazy arms stop at eps long before. At d = 4, 5 the lazy tangent space is defective
(Alexander-Hirschowitz, configs/lazy_threshold_l4.py): one component more than the count.

Memory: at d = 16, width 320 lazy_exact's J with its Gram matrix is ~0.8 GB per run, ~30 GB for the
widest program.

Checked at a reduced size on 2 shared CPU cores: --config.dims='(4,6)' --config.num_seeds=2
--config.steps=3000 took 3m44s; m* = 10, 21 for both lazy and lazy_exact (dimension count 8.75, 21;
d = 4 is defective), 3, 3 for beyond_lazy and for gd.

Expected run time: an estimate, not measured (no GPU was available): ~10-20 minutes on one
H100/H200, by the method in configs/lazy_vs_rich.py; plain gd's 20,000 steps at the widths where
it fails dominate the rich arms.
"""

import numpy as np

from configs import lazy_vs_rich


def get_config():
  c = lazy_vs_rich.get_config()
  c.order = 4
  c.dims = (4, 6, 8, 10, 12, 16)
  lazy_widths = tuple(int(w) for w in np.unique(np.round(np.geomspace(4, 320, 25))))
  c.algorithm_widths.lazy_exact = lazy_widths
  c.algorithm_widths.lazy = lazy_widths
  c.steps = 20000
  return c
