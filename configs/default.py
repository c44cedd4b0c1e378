r"""Default main job: plain gradient descent on order-3 targets over a few widths and dimensions.

  python launch.py --config=configs/default.py --workdir=workdirs/default

Expected run time: about a minute on 2 CPU cores.
"""

from overparam import config_lib


def get_config():
  c = config_lib.base_config()
  c.algorithms = ('gd',)
  c.order = 3
  c.dims = (10, 20, 40)
  c.rank = 3
  c.widths = (3, 6, 12, 24)
  c.num_seeds = 8
  c.steps = 3000
  c.lr = 0.05
  c.init_scale = 0.3
  c.eps = 0.05
  return c
