"""The algorithm registry: a toy algorithm registered from inside a test runs through the whole
launcher path (validation, memory check, programs, rows, summary, figures), then leaves no trace."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from overparam import algorithms, config_lib, experiments, memory, objectives, registry
from overparam.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class NormalizedGD(algorithms.GD):
  """Toy: gradient descent with normalized steps W <- W - lr g / ||g|| (a different step rule)."""

  def step(self, state, data):
    out, grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, state.params0, data)
    norm = optax.tree_utils.tree_norm(grads)
    unit = optax.tree_utils.tree_scale(1.0 / jnp.maximum(norm, 1e-30), grads)
    return algorithms.guarded_update(state, out, unit, optax.sgd(self.lr), self.eps, self.steps, data.target_sq)

  def extras(self, state, data):
    _, grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, state.params0, data)
    return {'grad_norm': optax.tree_utils.tree_norm(grads)}


def build(c, dim, bucket):
  spec = objectives.Spec(c.order, c.parametrization, config_lib.resolve_loss(c), 0.0)
  return NormalizedGD(spec=spec, dim=dim, bucket=bucket, steps=c.steps, lr=c.toy_ngd.lr,
                      init_scale=c.init_scale, eps=c.eps, dtype=config_lib.dtype_of(c))


def validate(c):
  config_lib.check_finite('toy_ngd.lr', c.toy_ngd.lr, 0.0, True)


def words(c, dim, bucket, rank):
  return 1000 * bucket * dim  # deliberately large, so the memory check sees it


TOY = registry.AlgorithmSpec(name='toy_ngd', build=build, defaults={'lr': 0.05}, validate=validate,
                             words_per_run=words, reads=('init_scale', 'parametrization'),
                             row_fields=('grad_norm',))


def tiny(**kw):
  c = config_lib.base_config()
  c.order, c.dims, c.rank, c.widths, c.num_seeds = 3, (4, 5), 2, (2, 3), 2
  c.steps, c.chunk_steps, c.eps, c.x64 = 60, 30, 0.05, True
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.mark.slow
def test_toy_algorithm_runs_through_the_launcher_path(tmp_path):
  with registry.registered(TOY):
    assert 'toy_ngd' in registry.names()
    c = tiny(algorithms=('toy_ngd', 'gd'), axes=('toy_ngd.lr=0.02,0.05',))
    assert c.toy_ngd.lr == 0.05 and 'toy_ngd' in c.algorithm_widths
    assert memory.program_bytes('toy_ngd', c, 4, 3, 2, runs=2) == 2 * memory.MARGIN * 8 * 1000 * 3 * 4
    with pytest.raises(ConfigError, match='the toy_ngd program for d=5'):
      c.memory_gb = 0.999 * memory.program_bytes('toy_ngd', c, 5, 3, 2, runs=4) / 2 ** 30
      experiments.run(c, str(tmp_path / 'refused'))
    assert not os.path.exists(tmp_path / 'refused')
    c.memory_gb = 0.0
    with pytest.raises(ConfigError, match='config.toy_ngd.lr must be > 0'):
      config_lib.validate(tiny(algorithms=('toy_ngd',), axes=('toy_ngd.lr=0.05,-1.0',)))
    wd = str(tmp_path / 'wd')
    summary = experiments.run(c, wd)
    with open(os.path.join(wd, 'results.jsonl')) as f:
      rows = [json.loads(line) for line in f]
    toy = [r for r in rows if r['algorithm'] == 'toy_ngd']
    assert len(toy) == 2 * 2 * 2 * 2  # lr values x dims x widths x seeds
    for r in toy:
      assert r['alpha'] is None and r['toy_ngd.lr'] in (0.02, 0.05) and r['grad_norm'] >= 0
      assert r['params_file'] and os.path.exists(os.path.join(wd, r['params_file']))
    assert all(r['toy_ngd.lr'] is None for r in rows if r['algorithm'] == 'gd')
    assert {(t['algorithm'], t.get('toy_ngd.lr')) for t in summary['thresholds']} == {
        ('toy_ngd', 0.02), ('toy_ngd', 0.05), ('gd', None)}
    for r in toy:
      with np.load(os.path.join(wd, r['params_file'])) as z:
        assert np.all(np.isfinite(z['factors']))
  assert 'toy_ngd' not in registry.names()
  assert 'toy_ngd' not in config_lib.base_config()
  with pytest.raises(ConfigError, match='config.algorithms'):
    config_lib.validate(tiny(algorithms=('toy_ngd',)))
  assert experiments.plot_only(wd)  # rows of an algorithm no longer registered still plot


def test_toy_step_rule_is_the_normalized_step():
  """One step of the toy equals W0 - lr g / ||g|| computed by hand (the engine runs what it declares)."""
  with registry.registered(TOY):
    c = tiny(algorithms=('toy_ngd',), dims=(4,))
    alg = experiments.build_algorithm('toy_ngd', c, 4, 3)
    t = experiments.make_target(c, 4, 0, None)
    data = jax.tree.map(lambda x: x[0], experiments.run_data(c, [(3, 0)], {0: t}, 3, 'implicit'))
    s0 = alg.init(data)
    s1 = alg.step(s0, data)
    g = jax.grad(lambda p: alg.loss(p, s0.params0, data)[0])(s0.params)
    norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(g)))
    for a, p, gg in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params), jax.tree.leaves(g)):
      np.testing.assert_allclose(a, np.asarray(p) - c.toy_ngd.lr * np.asarray(gg) / norm, rtol=1e-12, atol=1e-14)


def test_register_twice_is_refused_and_unregister_is_clean():
  with registry.registered(TOY):
    with pytest.raises(ValueError, match='already registered'):
      registry.register(TOY)
  with pytest.raises(RuntimeError):
    with registry.registered(TOY):
      raise RuntimeError('inside')
  assert 'toy_ngd' not in registry.names()
  assert registry.names() == config_lib.ALGORITHMS == ('gd', 'beyond_lazy', 'lazy', 'lazy_exact')


def test_builtin_specs_declare_what_the_engine_and_plots_need():
  assert registry.get('gd').alpha_scaled and not registry.get('beyond_lazy').alpha_scaled
  assert registry.get('lazy').lazy and registry.get('lazy_exact').lazy and not registry.get('gd').lazy
  assert registry.get('lazy_exact').bytes_per_run is not None
  assert set(config_lib.base_config().beyond_lazy) == set(registry.get('beyond_lazy').defaults)
  with pytest.raises(ValueError, match='exactly one'):
    registry.AlgorithmSpec(name='x', build=build)


def test_sub_config_of_an_unselected_algorithm_is_reported():
  c = tiny(algorithms=('gd',))
  assert config_lib.unused_subconfig_fields(c) == []
  c.beyond_lazy.lr = 0.3
  assert config_lib.unused_subconfig_fields(c) == ['config.beyond_lazy.lr = 0.3']
  c.algorithms = ('gd', 'beyond_lazy')
  assert config_lib.unused_subconfig_fields(c) == []
  c = tiny(algorithms=('lazy_exact',))
  c.lazy.momentum = 0.9  # lazy_exact reads config.lazy (symmetric_init, ntk_scaling)
  assert config_lib.unused_subconfig_fields(c) == []


def test_one_program_flag_chooses_the_width_groups():
  """widths (1, 3) are two buckets by default (3 > 2 x 1); a one-program algorithm runs them as one
  program, and the flag may depend on the config (lazy_exact: tensor targets only). The engine path of
  a one-program algorithm (runs = seeds, split per width) is tested with lazy_exact in test_lazy.py."""
  c = config_lib.base_config()
  assert registry.get('gd').width_groups((1, 3), c) == [[1], [3]]
  assert dataclasses.replace(TOY, one_program=True).width_groups((1, 3), c) == [[1, 3]]
  exact = registry.get('lazy_exact')
  assert exact.width_groups((1, 3), c) == [[1, 3]]
  c.loss = 'samples'
  assert not exact.is_one_program(c) and exact.width_groups((1, 3), c) == [[1], [3]]
