"""Optimizers and schedules from optax by name, against hand-written updates and closed forms."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import overparam
from overparam import config_lib, experiments, optim, planner, targets
from overparam.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**kw):
  c = config_lib.base_config()
  c.algorithms = ('gd',)
  c.order, c.dims, c.rank, c.widths, c.num_seeds = 3, (4,), 2, (3,), 1
  c.steps, c.chunk_steps, c.eps, c.x64, c.lr = 20, 10, 1e-6, True, 0.05
  for k, v in kw.items():
    c[k] = v
  return c


def one_run(c):
  """(algorithm, task, RunData, T*) of the width-3 run of seed 0, as the sweep builds them from the config."""
  prog = planner.plan(c)[0]
  t = targets.make_target(c, 4, 0, None)
  data = jax.tree.map(lambda x: x[0], planner.run_data(prog, [(3, 0, 0)], {0: t}))
  alg = jax.tree.map(lambda x: x[0], planner.run_algorithm(prog, [(3, 0, 0)]))
  return alg, prog.task, data, t


def grads(alg, task, state, data):
  return jax.jit(jax.grad(lambda p, p0: alg.loss(task, p, p0, data)[0]))(state.params, state.params0)


def stepper(alg, task, data):
  """(init, step) of one run, jitted."""
  return jax.jit(lambda: alg.init(task, data)), jax.jit(lambda s: alg.step(task, s, data))


def leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def fit_params(alg, c, t, steps):
  """The parameters after `steps` steps of overparam.fit on the same run (seed 0's key, width 3)."""
  res = overparam.fit(alg, jax.random.PRNGKey(0), overparam.CPTensor(t.coeffs, t.factors, c.order), width=3,
                      steps=steps, eps=c.eps)
  assert int(res.steps) == steps
  return leaves(res.params)


@pytest.mark.slow
def test_adamw_by_name_equals_the_formula():
  """Two steps of adamw(lr, b1, b2, eps, weight_decay) against the AdamW update written out."""
  lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-8, 0.01
  c = tiny(optimizer='adamw', lr=lr)
  c.optimizer_kwargs = {'weight_decay': wd}
  alg, task, data, target = one_run(c)
  assert alg.optimizer == optim.Optimizer('adamw', (('weight_decay', wd),), 'constant', ())
  init, step = stepper(alg, task, data)
  state = init()
  w = leaves(state.params)
  m = [np.zeros_like(x) for x in w]
  v = [np.zeros_like(x) for x in w]
  for t in (1, 2):
    g = leaves(grads(alg, task, state, data))
    state = step(state)
    m = [b1 * a + (1 - b1) * x for a, x in zip(m, g)]
    v = [b2 * a + (1 - b2) * x * x for a, x in zip(v, g)]
    w = [x - lr * ((a / (1 - b1 ** t)) / (np.sqrt(s / (1 - b2 ** t)) + eps) + wd * x) for x, a, s in zip(w, m, v)]
    for got, want in zip(leaves(state.params), w):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
  for got, want in zip(fit_params(alg, c, target, 2), w):  # overparam.fit runs the same two steps
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize('schedule, kwargs, expected', [
    ('constant', {}, lambda t, lr, n: lr),
    ('cosine', {}, lambda t, lr, n: lr * 0.5 * (1 + math.cos(math.pi * min(t, n) / n))),
    ('linear', {'end_value': 0.01}, lambda t, lr, n: lr + (0.01 - lr) * min(t, n) / n),
    ('warmup_cosine', {'warmup_steps': 4},
     lambda t, lr, n: lr * t / 4 if t < 4 else lr * 0.5 * (1 + math.cos(math.pi * (min(t, n) - 4) / (n - 4)))),
    ('exponential', {'transition_steps': 2, 'decay_rate': 0.5}, lambda t, lr, n: lr * 0.5 ** (t / 2)),
])
def test_schedule_lr_sequence(schedule, kwargs, expected):
  lr, n = 0.1, 10
  optim.check('sgd', {}, schedule, kwargs, n)
  fn = optim.schedule_fn(schedule, lr, n, optim.as_items(kwargs))
  got = [float(fn(t)) if callable(fn) else fn for t in range(n + 2)]
  want = [expected(t, lr, n) for t in range(n + 2)]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)

  def traced(lr):  # lr is a traced leaf of the algorithm under fit's jit and the engine's vmap
    f = optim.schedule_fn(schedule, lr, n, optim.as_items(kwargs))
    return jax.numpy.stack([f(t) if callable(f) else f for t in range(n + 2)])
  np.testing.assert_allclose(np.asarray(jax.jit(traced)(lr)), want, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(np.asarray(jax.vmap(traced)(jax.numpy.asarray([lr, 2 * lr])))[1],
                             [expected(t, 2 * lr, n) for t in range(n + 2)], rtol=1e-6, atol=1e-12)


def test_gd_with_a_schedule_takes_the_scheduled_steps():
  """sgd + linear schedule: W_{t+1} = W_t - lr_t g(W_t), lr_t = lr (1 - t / steps), by hand."""
  c = tiny(schedule='linear')
  alg, task, data, _ = one_run(c)
  assert task.steps == c.steps  # the schedule's horizon is the step budget
  init, step = stepper(alg, task, data)
  state = init()
  w = leaves(state.params)
  for t in range(3):
    g = leaves(grads(alg, task, state, data))
    state = step(state)
    w = [x - c.lr * (1 - t / c.steps) * y for x, y in zip(w, g)]
    for got, want in zip(leaves(state.params), w):  # optax evaluates lr_t from an int32 count in float32
      np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.slow
def test_every_algorithm_with_a_step_size_takes_the_optimizer(tmp_path):
  c = tiny(algorithms=('gd', 'beyond_lazy', 'lazy'), optimizer='adam', schedule='cosine', steps=40)
  experiments.run(c, str(tmp_path))
  with open(tmp_path / 'results.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert {r['algorithm'] for r in rows} == {'gd', 'beyond_lazy', 'lazy'}
  assert all(r['status'] != 'diverged' for r in rows)
  for name in ('beyond_lazy', 'lazy'):
    alg = config_lib.algorithm_of(c, name)
    assert alg.optimizer == optim.Optimizer('adam', (), 'cosine', ())


@pytest.mark.parametrize('field, value, match', [
    ('optimizer', 'adamm', 'config.optimizer must be an optax optimizer .* adamw'),
    ('optimizer', 'lbfgs', 'config.optimizer must be'),
    ('optimizer_kwargs', {'weight_decai': 0.1}, 'config.optimizer_kwargs.weight_decai is not an argument of optax.sgd'),
    ('optimizer_kwargs', {'learning_rate': 0.1}, 'config.optimizer_kwargs.learning_rate'),
    ('schedule', 'cosin', 'config.schedule must be one of constant, cosine'),
    ('schedule_kwargs', {'alpha': 0.1}, 'config.schedule_kwargs must be empty for schedule=constant'),
])
def test_bad_optimizer_fields_are_one_line_config_errors(field, value, match):
  c = tiny()
  c[field] = value
  with pytest.raises(ConfigError, match=match) as e:
    config_lib.validate(c)
  assert '\n' not in str(e.value)


def test_bad_schedule_arguments():
  with pytest.raises(ConfigError, match='schedule_kwargs.warmup_steps is required'):
    config_lib.validate(tiny(schedule='warmup_cosine'))
  c = tiny(schedule='warmup_cosine')
  c.schedule_kwargs = {'warmup_steps': 50}  # more than config.steps = 20
  with pytest.raises(ConfigError, match='config.schedule_kwargs: optax.warmup_cosine_decay_schedule refuses'):
    config_lib.validate(c)
  c = tiny(algorithms=('lazy',), optimizer='adam')
  c.lazy.momentum = 0.9
  with pytest.raises(ConfigError, match=r"config.lazy.momentum must be 0 for optimizer 'adam' \(momentum applies to sgd"):
    config_lib.validate(c)


def test_names_are_what_optax_offers():
  names = optim.optimizer_names()
  assert {'sgd', 'adam', 'adamw', 'lion', 'rmsprop'} <= set(names) and 'lbfgs' not in names


@pytest.mark.slow
def test_command_line_spelling(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  args = ['--config=configs/default.py', '--config.algorithms=("gd",)', '--config.dims=(5,)', '--config.rank=2',
          '--config.widths=(2,)', '--config.num_seeds=1', '--config.steps=30', '--config.chunk_steps=30',
          '--config.optimizer=adamw', '--config.optimizer_kwargs={"weight_decay": 0.01}',
          '--config.schedule=warmup_cosine', '--config.schedule_kwargs={"warmup_steps": 5}',
          '--config.axes=("lr=0.01,0.05",)', f'--workdir={tmp_path}']
  p = subprocess.run([sys.executable, 'launch.py', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  with open(tmp_path / 'config.json') as f:
    cfg = json.load(f)
  assert cfg['optimizer_kwargs'] == {'weight_decay': 0.01} and cfg['schedule_kwargs'] == {'warmup_steps': 5}
  with open(tmp_path / 'results.jsonl') as f:
    assert sorted(json.loads(line)['lr'] for line in f) == [0.01, 0.05]
