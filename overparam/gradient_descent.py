"""`gd`: gradient descent (any optax optimizer) on the nonlinear model, with optional alpha-scaling.

Minimizes 1/(2 alpha^2) ||T(W0) + alpha (T(W) - T(W0)) - T*||^2 + reg/2 ||W||^2 (Chizat, Oyallon,
Bach, "On Lazy Training in Differentiable Programming", 2019); alpha = 1 is plain GD on
L(W) = 1/2 ||T(W) - T*||^2 + reg/2 ||W||^2. As alpha grows, the trained model approaches the
linearized (lazy) one with the same init and learning rate.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from overparam import checks, core, memory, objectives, optim, tensors
from overparam.core import RunData, RunState, Task

SIGNS = ('positive', 'balanced')


@core.register
@dataclasses.dataclass(frozen=True)
class GD(core.Algorithm):
  """Gradient descent on T(W) (see the module docstring). Build it with `gd(...)`."""
  lr: Any
  init_scale: Any
  reg: Any
  alpha: Any
  parametrization: str = core.static()
  signs: str = core.static()
  optimizer: optim.Optimizer = core.static()
  alpha_model: bool = core.static()  # False: alpha is 1 and the model is T(W) itself (B components)

  def _opt(self, task: Task):
    return core.make_optimizer(self.optimizer, self.lr, task.steps)

  def _signs(self, data: RunData):
    return core.signs_vector(self.signs, core.dims_of(data)[0], core.dtype_of(data))

  def model(self, params, params0, data: RunData):
    """Canonical form (coeffs, factors) of the trained model: T(W) (B components), or with
    alpha_model T(W0) + alpha (T(W) - T(W0)) (2B components)."""
    signs = self._signs(data)
    c, v = objectives.canonical(params, self.parametrization, signs)
    if not self.alpha_model:
      return c * data.mask, v
    c0, v0 = objectives.canonical(params0, self.parametrization, signs)
    return (jnp.concatenate([self.alpha * c * data.mask, (1.0 - self.alpha) * c0 * data.mask]),
            jnp.concatenate([v, v0]))

  def init(self, task: Task, data: RunData) -> RunState:
    bucket, dim = core.dims_of(data)
    p = objectives.init_params(data.init_key, self.parametrization, bucket, dim, self.init_scale, core.dtype_of(data),
                               dim_mask=data.dim_mask)
    return core.new_state(p, self._opt(task).init(p), p, core.dtype_of(data))

  def loss(self, task: Task, params, params0, data: RunData):
    c, v = self.model(params, params0, data)
    dl = objectives.data_loss(c, v, data.target, task.order, task.loss, data.samples)
    total = dl / self.alpha ** 2 if self.alpha_model else dl
    return total + self.reg * objectives.regularizer(params, data.mask), dl

  def step(self, task: Task, state: RunState, data: RunData) -> RunState:
    data = core.with_step_samples(task, data, state.step)
    out, grads = jax.value_and_grad(lambda p: self.loss(task, p, state.params0, data), has_aux=True)(state.params)
    return core.guarded_update(task, state, out, grads, self._opt(task), data)

  def export(self, task: Task, state: RunState, data: RunData):
    return self.model(state.params, state.params0, data)

  def trace(self, task: Task, state: RunState, data: RunData):
    out = {'rel_error': state.rel_err, 'step': state.step}
    if data.target.factors is not None:  # per true component: max |cos|, aligned weight (deflation)
      out.update(core.alignment_trace(*self.export(task, state, data), data, task.order))
    return out

  def extras(self, task: Task, state: RunState, data: RunData):
    gap = linearization_gap(state.params, state.params0, self._signs(data), data, self.parametrization, task.order,
                            self.alpha if self.alpha_model else 1.0)
    return {'linearization_gap': gap, **core.sample_extras(task, self.export(task, state, data), state, data)}

  @classmethod
  def unify(cls, algs):
    """An alpha axis that includes alpha = 1 runs every value on the alpha model."""
    if any(a.alpha_model for a in algs):
      return [dataclasses.replace(a, alpha_model=True) for a in algs]
    return list(algs)


def gd(*, lr=0.05, init_scale=0.3, reg=0.0, alpha=1.0, parametrization: str = 'cp', signs: str = 'positive',
       optimizer: str = 'sgd', optimizer_kwargs=None, schedule: str = 'constant', schedule_kwargs=None) -> GD:
  """Gradient descent on the nonlinear model T(W) = sum_i c_i(W) v_i(W)^{(x)l}.

  Numeric hyperparameters may be arrays or tracers (vmap over them); the others are static choices.

  Args:
    lr: the optimizer's step size on the raw loss 1/2 ||T - T*||^2 (a finite number > 0).
    init_scale: W0 has factors init_scale * Unif(S^{d-1}) and cp coefficients init_scale (a finite number > 0).
    reg: l2 regularization reg/2 ||W||^2 (a finite number >= 0).
    alpha: Chizat et al.'s scale: train T(W0) + alpha (T(W) - T(W0)) on the loss / alpha^2; 1 is plain GD (a finite number > 0).
    parametrization: cp (c_i u_i^l), power (s_i w_i^l) or homogeneous (s_i ||w_i||^2 (w_i/||w_i||)^l).
    signs: the fixed signs s_i of power and homogeneous: positive or balanced (+1, -1, ...).
    optimizer: an optax optimizer alias that takes learning_rate (sgd, adam, adamw, lion, ...).
    optimizer_kwargs: its other arguments, e.g. {'b1': 0.8} (checked against its signature).
    schedule: the step-size schedule: constant, cosine, warmup_cosine, linear, ... (overparam/optim.py).
    schedule_kwargs: the schedule's other arguments, e.g. {'warmup_steps': 100}.

  Returns a GD value for overparam.fit (a pytree: lr, init_scale, reg, alpha are its leaves).
  Raises errors.ArgumentError naming the argument when a concrete value is out of range.
  """
  checks.number('lr', lr, 0.0, True)
  checks.number('init_scale', init_scale, 0.0, True)
  checks.number('reg', reg, 0.0)
  checks.number('alpha', alpha, 0.0, True)
  checks.choice('parametrization', parametrization, objectives.PARAMETRIZATIONS)
  checks.choice('signs', signs, SIGNS)
  opt = optim.optimizer(optimizer, optimizer_kwargs, schedule, schedule_kwargs)
  return GD(lr=lr, init_scale=init_scale, reg=reg, alpha=alpha, parametrization=parametrization, signs=signs,
            optimizer=opt, alpha_model=not checks.is_concrete_value(alpha, 1.0))


def linearization_gap(params, params0, signs, data: RunData, parametrization: str, order: int, alpha=1.0,
                      dense_limit: int = 1 << 15) -> jax.Array:
  """||T_a(W) - T_a,lin(W)|| / ||T*|| for the alpha model T_a(W) = T(W0) + alpha (T(W) - T(W0)).

  T_a,lin(W) = T(W0) + alpha J_{W0} (W - W0), so the gap is alpha ||T(W) - T(W0) - J dW|| / ||T*||,
  dW = W - W0 (masked components excluded). Dense when d^l <= dense_limit (every run of a program
  holds its d^l arrays at once); otherwise implicit, O(m^2 d):
  with A(P, Q) = <T(P), T(Q)> = cp_inner, every term is A or a derivative of A along dW
  (<T(P), J dW> = d/dt A(P, W0 + t dW), ||J dW||^2 = d2/ds dt A(W0 + s dW, W0 + t dW)); its
  cancellation floor is about sqrt(machine eps) ||T|| / ||T*||.
  """
  _, dim = core.dims_of(data)

  def canon(p):
    c, v = objectives.canonical(p, parametrization, signs)
    return c * data.mask, v

  delta = optax.tree_utils.tree_sub(params, params0)
  if dim ** order <= dense_limit:
    dense = lambda p: tensors.dense_cp(*canon(p), order)
    t0, jd = jax.jvp(dense, (params0,), (delta,))
    gap = dense(params) - t0 - jd
    sq = jnp.sum(gap * gap)
  else:
    inner = lambda p, q: tensors.cp_inner(*canon(p), *canon(q), order)
    along = lambda f: jax.jvp(f, (params0,), (delta,))[1]  # d/dt f(W0 + t dW) at t = 0
    t1_j = along(lambda q: inner(params, q))
    t0_j = along(lambda q: inner(params0, q))
    j_j = along(lambda p: along(lambda q: inner(p, q)))
    sq = (inner(params, params) - 2.0 * inner(params, params0) + inner(params0, params0)
          - 2.0 * (t1_j - t0_j) + j_j)
  return alpha * jnp.sqrt(jnp.maximum(sq, 0.0) / data.target_sq)


def words_per_run(alg: GD, task: Task, dim: int, bucket: int, rank: int) -> int:
  """Parameters and their copies, optimizer state, the loss's intermediates (the alpha model has 2B
  terms) and the samples."""
  terms = 2 * bucket if alg.alpha_model else bucket
  return memory.cp_model_words(task, alg.optimizer, dim, bucket, rank,
                               per_comp=memory.params_per_component(alg.parametrization, dim), terms=terms)
