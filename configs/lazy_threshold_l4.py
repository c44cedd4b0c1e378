r"""Lazy (NTK) threshold, order 4: configs/lazy_threshold.py with l = 4 and d from 3 to 16.

  python launch.py --config=configs/lazy_threshold_l4.py --workdir=workdirs/lazy_threshold_l4

Everything as in configs/lazy_threshold.py (whose docstring explains the fields) but the order, the
dimensions and the width grid (geometric 4..280, ratio ~1.2, plus 9 and 14). At d = 3, 4, 5 the
tangent space is defective (Alexander-Hirschowitz): m d >= C(d+3, 4) does not give a full rank
(m = 5, 9, 14 have rank C(d+3, 4) - 1), so the measured threshold is one width above the dimension
count. C(d+3, 4)/d = (d+1)(d+2)(d+3)/24 has local slope d/(d+1) + d/(d+2) + d/(d+3): 2.5 at d = 10,
2.63 at d = 14, 2.67 at d = 16, far from the asymptotic 3.

Measured (docs/RESULTS.md section 5): m* = 6, 10, 15, 21, 31, 44, 64, 77, 134, 194, 280 at
d = 3..10, 12, 14, 16 (the tangent-rank threshold at every d); exponent 2.35 +- 0.07 against the
count's 2.34 over the same d.

Expected run time: 8 min 23 s measured on 2 CPU cores shared with other jobs (load 2.3-4.7; 332
CPU-seconds, ~3 minutes on 2 free cores); d = 14, 16 dominate (J is 2,380 x 4,760 and 3,876 x 4,760
per seed at the grid's largest width, 280).
"""

import numpy as np

from configs import lazy_threshold


def get_config():
  c = lazy_threshold.get_config()
  c.order = 4
  c.dims = (3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16)
  # geometric (ratio ~1.2) plus the Alexander-Hirschowitz widths 9 (d = 4) and 14 (d = 5)
  c.widths = tuple(sorted(set(int(w) for w in np.round(np.geomspace(4, 280, 24))) | {9, 14}))
  return c
