"""The algorithm registry: a toy algorithm written and registered from this test file, exactly as
docs/ADDING_AN_ALGORITHM.md says (nothing in overparam/ is edited), runs through overparam.fit and the
whole launcher path (validation, memory check, one program for its hyperparameter axis, rows,
summary, figures), then leaves no trace."""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import overparam
from overparam import checks, config_lib, core, experiments, fitting, inputs, objectives, planner, registry, targets
from overparam.errors import ArgumentError, ConfigError


@core.register
@dataclasses.dataclass(frozen=True)
class NormalizedGD(core.Algorithm):
  """Toy: gradient descent with normalized steps W <- W - lr g / ||g||."""
  lr: Any
  init_scale: Any
  parametrization: str = core.static()

  def _signs(self, data):
    return jnp.ones(data.mask.shape, core.dtype_of(data))

  def init(self, task, data):
    bucket, dim = core.dims_of(data)
    p = objectives.init_params(data.init_key, self.parametrization, bucket, dim, self.init_scale, core.dtype_of(data))
    return core.new_state(p, optax.sgd(self.lr).init(p), p, core.dtype_of(data))

  def loss(self, task, params, data):
    c, v = objectives.canonical(params, self.parametrization, self._signs(data))
    dl = objectives.data_loss(c * data.mask, v, data.target, task.order, task.loss)
    return dl, dl

  def step(self, task, state, data):
    out, grads = jax.value_and_grad(lambda p: self.loss(task, p, data), has_aux=True)(state.params)
    norm = optax.tree_utils.tree_norm(grads)
    unit = optax.tree_utils.tree_scale(1.0 / jnp.maximum(norm, 1e-30), grads)
    return core.guarded_update(task, state, out, unit, optax.sgd(self.lr), data)

  def export(self, task, state, data):
    c, v = objectives.canonical(state.params, self.parametrization, self._signs(data))
    return c * data.mask, v

  def extras(self, task, state, data):
    grads = jax.grad(lambda p: self.loss(task, p, data)[0])(state.params)
    return {'grad_norm': optax.tree_utils.tree_norm(grads)}


def toy_ngd(*, lr=0.05, init_scale=0.3, parametrization: str = 'cp') -> NormalizedGD:
  """Gradient descent with normalized steps.

  Args:
    lr: the length of every step (a finite number > 0).
    init_scale: the init scale (a finite number > 0).
    parametrization: cp, power or homogeneous.
  """
  checks.number('lr', lr, 0.0, True)
  checks.number('init_scale', init_scale, 0.0, True)
  checks.choice('parametrization', parametrization, objectives.PARAMETRIZATIONS)
  return NormalizedGD(lr=lr, init_scale=init_scale, parametrization=parametrization)


TOY = registry.AlgorithmSpec(
    name='toy_ngd', make=toy_ngd,
    fields={'lr': 'toy_ngd.lr', 'init_scale': 'init_scale', 'parametrization': 'parametrization'},
    row_fields=('grad_norm',),
    words_per_run=lambda alg, task, dim, bucket, rank: 1000 * bucket * dim)  # large: the memory check sees it


def tiny(**kw):
  c = config_lib.base_config()
  c.order, c.dims, c.rank, c.widths, c.num_seeds = 3, (4, 5), 2, (2, 3), 2
  c.steps, c.chunk_steps, c.eps, c.x64 = 60, 30, 0.05, True
  for k, v in kw.items():
    c[k] = v
  return c


def _target(d=4, seed=0):
  a = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, 2)))[0].T
  return overparam.CPTensor(jnp.ones(2, jnp.float64), jnp.asarray(a), 3)


def test_toy_step_is_the_normalized_step_and_fit_runs_it():
  """One step equals W0 - lr g / ||g|| written out; fit runs the new algorithm with no other change."""
  alg = toy_ngd(lr=0.05)
  t = _target()
  task = core.Task(order=3, loss='implicit', steps=10)
  data = fitting.run_data(alg, task, jax.random.PRNGKey(0), inputs.as_target(t)[0], 3, 0.05)
  s0 = alg.init(task, data)
  s1 = alg.step(task, s0, data)
  g = jax.grad(lambda p: alg.loss(task, p, data)[0])(s0.params)
  norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(g)))
  for a, p, gg in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params), jax.tree.leaves(g)):
    np.testing.assert_allclose(a, np.asarray(p) - 0.05 * np.asarray(gg) / norm, rtol=1e-12, atol=1e-14)
  res = overparam.fit(alg, jax.random.PRNGKey(0), t, width=3, steps=10)
  assert int(res.steps) == 10 and res.coeffs.shape == (3,) and float(res.extras['grad_norm']) > 0
  lrs = jnp.array([0.01, 0.05])
  batched = jax.vmap(lambda lr: overparam.fit(toy_ngd(lr=lr), jax.random.PRNGKey(0), t, width=3, steps=10).rel_error)(lrs)
  np.testing.assert_allclose(batched[1], res.rel_error, rtol=1e-12)
  with pytest.raises(ArgumentError, match='lr must be a finite number > 0'):
    toy_ngd(lr=0.0)


@pytest.mark.slow
def test_toy_algorithm_runs_through_the_launcher_path(tmp_path):
  with registry.registered(TOY):
    assert 'toy_ngd' in registry.names()
    c = tiny(algorithms=('toy_ngd', 'gd'), axes=('toy_ngd.lr=0.02,0.05',))
    assert c.toy_ngd.lr == 0.05 and 'toy_ngd' in c.algorithm_widths
    progs = [p for p in planner.plan(c) if p.name == 'toy_ngd']
    assert len(progs) == 2  # one program per d: the lr axis is a vmapped axis of the program
    assert all(len(p.run_values) == 2 for p in progs)
    assert planner.program_bytes(progs[0], 2, 8) == 2 * 2 * 8 * 1000 * 3 * 4  # runs x margin x f64 x words
    with pytest.raises(ConfigError, match='the toy_ngd program for d=5'):
      c.memory_gb = 0.999 * planner.program_bytes(progs[1], 2 * 2 * 2, 8) / 2 ** 30
      experiments.run(c, str(tmp_path / 'refused'))
    assert not os.path.exists(tmp_path / 'refused')
    c.memory_gb = 0.0
    with pytest.raises(ConfigError, match='config.toy_ngd.lr must be a finite number > 0'):
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
    # the engine's row is the library's fit with the seed's key
    r = next(x for x in toy if x['dim'] == 4 and x['width'] == 3 and x['seed'] == 1 and x['toy_ngd.lr'] == 0.02)
    t = targets.make_target(c, 4, 1, None)
    res = overparam.fit(toy_ngd(lr=0.02), jax.random.PRNGKey(1), overparam.CPTensor(t.coeffs, t.factors, 3),
                        width=3, steps=c.steps, eps=c.eps)
    assert int(res.steps) == r['steps']
    with np.load(os.path.join(wd, r['params_file'])) as z:
      np.testing.assert_allclose(z['factors'], res.factors, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(res.rel_error), r['rel_error'], rtol=1e-8)
  assert 'toy_ngd' not in registry.names()
  assert 'toy_ngd' not in config_lib.base_config()
  with pytest.raises(ConfigError, match='config.algorithms'):
    config_lib.validate(tiny(algorithms=('toy_ngd',)))
  assert experiments.plot_only(wd)  # rows of an algorithm no longer registered still plot


def test_register_twice_is_refused_and_unregister_is_clean():
  with registry.registered(TOY):
    with pytest.raises(ValueError, match='already registered'):
      registry.register(TOY)
  with pytest.raises(RuntimeError):
    with registry.registered(TOY):
      raise RuntimeError('inside')
  assert 'toy_ngd' not in registry.names()
  assert registry.names() == ('gd', 'beyond_lazy', 'lazy', 'lazy_exact')


def test_a_shared_field_with_another_default_is_refused():
  bad = dataclasses.replace(TOY, make=lambda *, lr=0.05, init_scale=0.5, parametrization='cp': None)
  with pytest.raises(ValueError, match='config.init_scale defaults to 0.5'):
    registry.register(bad)
  assert 'toy_ngd' not in registry.names()


def test_builtin_specs_declare_what_the_engine_and_plots_need():
  assert registry.get('gd').alpha_scaled and not registry.get('beyond_lazy').alpha_scaled
  assert registry.get('lazy').lazy and registry.get('lazy_exact').lazy and not registry.get('gd').lazy
  assert registry.get('lazy_exact').bytes_per_run is not None
  assert set(config_lib.base_config().beyond_lazy) == set(registry.get('beyond_lazy').subconfig_defaults())
  with pytest.raises(ValueError, match='exactly one'):
    registry.AlgorithmSpec(name='x', make=toy_ngd, fields={})
  with pytest.raises(ValueError, match='not arguments'):
    registry.AlgorithmSpec(name='x', make=toy_ngd, fields={'lrr': 'x.lrr'}, words_per_run=len)


def test_config_defaults_are_the_constructors():
  """One place for every default: the config reads the constructors' keyword defaults."""
  c = config_lib.base_config()
  for spec in registry.specs():
    for arg, field in spec.fields.items():
      value = config_lib.get_field(c, field)
      default = spec.defaults()[arg]
      assert (dict(value) if hasattr(value, 'to_dict') else value) == (default or ({} if arg.endswith('kwargs') else default)), (spec.name, arg)
  assert c.steps == core.DEFAULT_STEPS and c.eps == core.DEFAULT_EPS


def test_argument_docs_cover_every_field():
  """Every constructor argument a config field reads is documented (the launcher's help lists them)."""
  for spec in registry.specs():
    docs = spec.argument_docs()
    assert set(spec.fields) <= set(docs), (spec.name, set(spec.fields) - set(docs))
    assert all(len(v) > 10 for v in docs.values())


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


def test_one_program_flag_chooses_the_programs():
  """widths (1, 3) are two buckets (3 > 2 x 1); lazy_exact runs its grid as one program for tensor
  targets and in buckets on samples."""
  c = tiny(algorithms=('gd', 'lazy_exact'), dims=(4,), widths=(1, 3))
  progs = planner.plan(c)
  assert [(p.name, p.widths) for p in progs] == [('gd', (1,)), ('gd', (3,)), ('lazy_exact', (1, 3))]
  c.loss, c.algorithms = 'samples', ('lazy_exact',)
  assert [p.widths for p in planner.plan(c)] == [(1,), (3,)]
