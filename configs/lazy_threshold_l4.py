r"""Lazy (NTK) threshold, order 4: configs/lazy_threshold.py with l = 4 and d from 3 to 16.

  python launch.py --config=configs/lazy_threshold_l4.py --workdir=workdirs/lazy_threshold_l4

Everything as in configs/lazy_threshold.py (whose docstring explains the fields) but the order, the
dimensions and the width grid (geometric 4..280, ratio ~1.2, plus 9 and 14). At d = 3, 4, 5 the
tangent space is defective (Alexander-Hirschowitz): m d >= C(d+3, 4) does not give a full rank
(m = 5, 9, 14 have rank C(d+3, 4) - 1), so the measured threshold is one width above the dimension
count. C(d+3, 4)/d = (d+1)(d+2)(d+3)/24 has local slope d/(d+1) + d/(d+2) + d/(d+3): 2.5 at d = 10,
2.63 at d = 14, 2.67 at d = 16, far from the asymptotic 3.

Expected run time: see MEASURED below (4 seeds; d = 14, 16 dominate: J is 2,380 x 3,040 and
3,876 x 3,876 per seed at the dimension count).
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
