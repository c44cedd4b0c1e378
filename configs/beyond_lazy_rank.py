r"""Beyond lazy, m*(r): the smallest width versus the rank r = 1..8 of an order-3 target at d = 100.

  python launch.py --config=configs/beyond_lazy_rank.py --workdir=workdirs/beyond_lazy_rank

The companion of configs/beyond_lazy.py (m* versus d). `ranks` is a cell axis: one sweep runs every
r (rows carry `rank`); summary.json holds m*(r) per arm and the power-law fit of m* against r
(`exponents` entries with versus = rank); figures/m_star_vs_rank.png plots both arms with their
fits and the line m = r, figures/success_vs_overparam.png the success rate against m / r.
The paper's bound is m = O*(r^{2.5 l}); what this measures is the actual threshold of the two arms
(beyond_lazy: this project's reconstruction of a beyond-lazy variant; gd: plain GD on Eq. (1) from
init 0.3), on random unit a_j.

Expected run time: ~9 minutes on 2 CPU cores (8 seeds; measured 5 minutes with
--config.num_seeds=4, most of it compiling one program per (arm, rank, width bucket)).
"""

from overparam import config_lib


def get_config():
  c = config_lib.base_config()
  c.algorithms = ('beyond_lazy', 'gd')
  c.order = 3
  c.dims = (100,)
  c.rank = 1
  c.ranks = (1, 2, 3, 4, 5, 6, 7, 8)
  c.target.kind = 'random_unit'
  c.widths = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 32)
  c.num_seeds = 8
  c.steps = 8000
  c.chunk_steps = 500
  c.lr = 0.05
  c.init_scale = 0.3
  c.eps = 0.05
  return c
