r"""Lazy (NTK) threshold, order 4: configs/lazy_threshold.py with l = 4 and d from 3 to 10.

  python launch.py --config=configs/lazy_threshold_l4.py --workdir=workdirs/lazy_threshold_l4

Everything as in configs/lazy_threshold.py (whose docstring explains the fields) but the order, the
dimensions and the width grid. At d = 3, 4, 5 the tangent space is defective (Alexander-Hirschowitz):
m d >= C(d+3, 4) does not give a full rank (m = 5, 9, 14 have rank C(d+3, 4) - 1), so the measured
threshold is one width above the dimension count. At d = 9 the grid width 55 makes J square
(55 * 9 = C(12, 4)) and at d = 6 nearly so (22 * 6 = 132, C(9, 4) = 126): `lazy` GD stopped short of
eps there in most seeds (see configs/lazy_threshold.py), `lazy_exact` did not. Over
d = 3..10 the fitted exponent of m* is ~2.1, far from the asymptotic 3: C(d+3, 4)/d =
(d+1)(d+2)(d+3)/24 has local slope ~2.5 at d = 10.

Expected run time: about 10 minutes on 2 CPU cores (4 seeds; ~80 programs compile).
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
