"""`beyond_lazy`: gradient descent beyond the lazy regime, a reconstruction (docs/DESIGN.md section 4).

Provenance, exactly. It is not "Algorithm 1" of Wang, Wu, Lee, Ma, Ge, "Beyond Lazy Training for
Over-parameterized Tensor Decomposition" (NeurIPS 2020): that algorithm is not in its public text.
  - From the 2020 paper (abstract and introduction): the problem and objective (1), fitting
    T* = sum_j c*_j a_j^{(x)l} by m > r components; the lazy bound m = Omega(d^{l-1}); and that "a
    variant of gradient descent can find an approximate tensor when m = O*(r^{2.5l} log d)", the
    variant running on an objective different from (1). Nothing else here comes from it.
  - From Ge, Ren, Wang, Zhou, "Understanding Deflation Process in Over-parametrized Tensor
    Decomposition" (NeurIPS 2021), whose abstract proves that "a slightly modified version of gradient
    flow" follows a deflation process on orthogonally decomposable tensors: the structure of that
    modified flow, whose inputs are the number of components m, an initialization scale, a
    re-initialization threshold, an epoch-length growth rate, a target accuracy and a regularization
    coefficient: small init on the sphere, l2-regularized gradient flow in epochs of growing length,
    components below the threshold re-initialized at epoch starts, stop at the target accuracy.
  - This project's choices: discrete GD steps (an optax optimizer, step config.beyond_lazy.lr) instead
    of a flow; training on T*/||T*||_F (normalized units, so one set of defaults serves every scale);
    the 2-homogeneous parametrization below; a re-initialization threshold ABOVE the init scale
    (re-draw what did not grow 10x in an epoch; README "Beyond lazy" has the measurement that chose
    it); the epoch schedule round(epoch_length * epoch_growth^e); re-draw keys; the stopping rule
    rel_error < eps at any step (not only at an epoch end); every default value.
  Therefore a measured m* of this code is not a test of the 2020 theorem (whose algorithm and
  constants are not public) nor of the 2021 theorem (which is for orthogonal tensors, a flow and its
  own parameter scalings): it measures what this reconstruction does, on the targets it is given.

Model: the 2-homogeneous parametrization T(W) = sum_i s_i ||w_i||^2 (w_i / ||w_i||)^{(x)l}.
Loss:  1/2 ||T(W) - T*/||T*||_F||_F^2 + reg/2 ||W||_F^2   (the target is normalized, see below).
Init:  w_i = init_scale * Unif(S^{d-1}), component i from fold_in(init_key, i).
Epochs: epoch e (e = 0, 1, ...) lasts round(epoch_length * epoch_growth^e) steps. At the start of
  every epoch e >= 1, each real component with ||w_i|| < reinit_threshold is re-drawn as
  init_scale * Unif(S^{d-1}) from fold_in(fold_in(reinit_key, e), i); every other component, and
  the padding, is left as it is. Optimizer moments of a re-drawn component are reset.
Stop:  rel_error < eps (checked at every step by core.guarded_update; in float32 at 0.99 eps,
  see core.F32_STOP_MARGIN) or the step budget.

Why it leaves the lazy regime: under this parametrization the direction v_i = w_i / ||w_i|| moves
at a speed independent of ||w_i|| (dv_i/dt = l P_perp (T* - T)(v_i, ..., v_i, .) -- a tensor power
flow), while log ||w_i|| grows at rate 2 <T* - T, v_i^{(x)l}> - reg. A small init therefore costs
nothing in the direction dynamics but keeps every component tiny until its direction has locked on
a component a_j of the residual; the large a_j are fitted first (deflation), and components that
arrive at an already fitted a_j stop growing and are recycled by the re-initialization.

Units. The algorithm trains on T* / ||T*||_F and rescales its export by ||T*||_F: the parameters
(init_scale, reinit_threshold, reg, lr) are dimensionless, so one set of defaults works whatever
the scale of the target (rank, weights, a user's file). The step size has its own config field
(config.beyond_lazy.lr) because of this: config.lr is plain gd's step on the raw loss. With
loss = 'samples' (overparam/network.py) it fits the network's empirical loss with the labels divided
by the same ||T*||_F (f_{T*/s} = f_{T*}/s), and stops when the training error is below data.stop_eps.

The re-initialization is a mask, never a Python branch: the step function of every run is the same
traced program, so it runs inside the sweep engine's vmapped scan. Under vmap a conditional
executes both branches, so drawing B fresh directions at every step to use them only at epoch
boundaries would cost O(B d) random numbers per step (measured: 2-3x the step itself at B = 32).
Instead the directions of the next epoch's re-draws are drawn ahead, ceil(B / epoch_length) rows
per step, into a (B, d) buffer: row i of epoch e is always fold_in(fold_in(reinit_key, e), i)
whichever step drew it, and every epoch is at least epoch_length steps long, so the buffer is
complete at the boundary.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from overparam import checks, core, memory, network, objectives, optim, tensors
from overparam.core import RunData, RunState, Task
from overparam.gradient_descent import SIGNS


class Aux(NamedTuple):
  """Algorithm state carried in RunState.aux."""
  epoch: jax.Array        # index of the current epoch (0 until the first boundary)
  epoch_start: jax.Array  # step at which the current epoch started
  boundary: jax.Array     # step at which the next epoch starts
  reinits: jax.Array      # components re-drawn so far (all epochs)
  pending: jax.Array      # (B, d) re-draw directions of the next epoch, filled during this one


def epoch_length_of(epoch, epoch_length: int, epoch_growth):
  """Length in steps of epoch `epoch` (0-based): max(1, round(epoch_length * epoch_growth^epoch))."""
  e = jnp.asarray(epoch, jnp.float32)
  n = jnp.round(epoch_length * jnp.power(jnp.asarray(epoch_growth, jnp.float32), e))
  return jnp.clip(n, 1.0, 2.0 ** 30).astype(jnp.int32)


def normalized_target(target: tensors.Target, scale) -> tensors.Target:
  """T* / scale, keeping every part of the target (CP structure and dense tensor) consistent."""
  return tensors.Target(
      coeffs=None if target.coeffs is None else target.coeffs / scale,
      factors=target.factors,
      dense=None if target.dense is None else target.dense / scale)


@core.register
@dataclasses.dataclass(frozen=True)
class BeyondLazy(core.Algorithm):
  """The beyond-lazy reconstruction as a per-run algorithm (see the module docstring: not the 2020
  paper's Algorithm 1). Build it with `beyond_lazy(...)`."""
  lr: Any
  init_scale: Any
  reinit_threshold: Any
  epoch_growth: Any
  reg: Any
  epoch_length: int = core.static()
  signs: str = core.static()
  optimizer: optim.Optimizer = core.static()

  def _opt(self, task: Task):
    return core.make_optimizer(self.optimizer, self.lr, task.steps)

  def _scale(self, data: RunData):
    return jnp.sqrt(data.target_sq).astype(core.dtype_of(data))

  def _signs(self, data: RunData):
    return core.signs_vector(self.signs, core.dims_of(data)[0], core.dtype_of(data))

  def rows_per_step(self, bucket: int) -> int:
    """Rows of the next epoch's re-draw buffer drawn at each step (the buffer fills in one epoch)."""
    return max(1, -(-bucket // self.epoch_length))

  def fresh_directions(self, reinit_key, epoch, ids, dim: int, dtype, dim_mask=None):
    """init_scale * Unif(S^{d-1}) for components `ids` (k,) of epoch `epoch`: (k, d).

    Component i of epoch e uses fold_in(fold_in(reinit_key, e), i), as objectives.init_params
    draws component i from fold_in(key, i). dim_mask: a padded program's real coordinates
    (RunData.dim_mask): only those are drawn, the rest are 0.
    """
    ek = jax.random.fold_in(reinit_key, epoch)
    g = objectives.component_normals(ek, ids, dim, dtype)  # row j: normal(fold_in(ek, ids[j]), (dim,))
    if dim_mask is not None:
      g = g * dim_mask
    return self.init_scale * g / jnp.linalg.norm(g, axis=-1, keepdims=True)

  def init(self, task: Task, data: RunData) -> RunState:
    bucket, dim = core.dims_of(data)
    dtype = core.dtype_of(data)
    p = objectives.init_params(data.init_key, 'homogeneous', bucket, dim, self.init_scale, dtype, dim_mask=data.dim_mask)
    zero = jnp.zeros((), jnp.int32)
    aux = Aux(epoch=zero, epoch_start=zero, boundary=epoch_length_of(0, self.epoch_length, self.epoch_growth),
              reinits=zero, pending=jnp.zeros((bucket, dim), dtype))
    return core.new_state(p, self._opt(task).init(p), p, dtype, aux=aux)

  def reinitialize(self, task: Task, state: RunState, data: RunData) -> RunState:
    """Starts the next epoch if this step is an epoch boundary (a no-op otherwise).

    At a boundary of a running run, re-draws exactly the real components whose norm is below
    reinit_threshold, resets their optimizer moments, and advances epoch and boundary.
    """
    aux = state.aux
    at = (state.status == core.RUNNING) & (state.step == aux.boundary) & (state.step < task.steps)
    new_epoch = aux.epoch + 1
    w = state.params['factors']
    small = jnp.sum(w * w, axis=-1) < self.reinit_threshold ** 2
    redraw = at & (data.mask > 0) & small
    params = {**state.params, 'factors': jnp.where(redraw[:, None], aux.pending, w)}
    fresh_opt = self._opt(task).init(params)

    def reset(old, new):  # per-component optimizer leaves (moments) restart with the component
      if old.shape == w.shape:
        return jnp.where(redraw[:, None], new, old)
      return old
    opt_state = jax.tree.map(reset, state.opt_state, fresh_opt)
    aux = aux._replace(
        epoch=jnp.where(at, new_epoch, aux.epoch),
        epoch_start=jnp.where(at, state.step, aux.epoch_start),
        boundary=jnp.where(at, aux.boundary + epoch_length_of(new_epoch, self.epoch_length, self.epoch_growth),
                           aux.boundary),
        reinits=aux.reinits + jnp.sum(redraw).astype(jnp.int32))
    return state._replace(params=params, opt_state=opt_state, aux=aux)

  def draw_ahead(self, state: RunState, data: RunData) -> RunState:
    """Draws the next rows of the next epoch's re-draw buffer (idempotent once it is full)."""
    aux = state.aux
    bucket, dim = core.dims_of(data)
    k = self.rows_per_step(bucket)
    ids = jnp.minimum((state.step - aux.epoch_start) * k + jnp.arange(k), bucket - 1)
    rows = self.fresh_directions(data.reinit_key, aux.epoch + 1, ids, dim, core.dtype_of(data), data.dim_mask)
    return state._replace(aux=aux._replace(pending=aux.pending.at[ids].set(rows)))

  def loss(self, task: Task, params, data: RunData):
    scale = self._scale(data)
    target = normalized_target(data.target, scale)
    samples = None if data.samples is None else network.scale_labels(data.samples, 1.0 / scale)
    return objectives.objective(params, self._signs(data), data.mask, target, task.order, 'homogeneous', task.loss,
                                self.reg, samples)

  def step(self, task: Task, state: RunState, data: RunData) -> RunState:
    data = core.with_step_samples(task, data, state.step)
    state = self.draw_ahead(self.reinitialize(task, state, data), data)
    out, grads = jax.value_and_grad(lambda p: self.loss(task, p, data), has_aux=True)(state.params)
    return core.guarded_update(task, state, out, grads, self._opt(task), data, jnp.ones_like(data.target_sq))

  def export(self, task: Task, state: RunState, data: RunData):
    c, v = objectives.canonical(state.params, 'homogeneous', self._signs(data))
    return c * data.mask * self._scale(data), v

  def extras(self, task: Task, state: RunState, data: RunData):
    out = {'epochs': state.aux.epoch, 'reinitialized': state.aux.reinits}
    return {**out, **core.sample_extras(task, self.export(task, state, data), state, data)}

  def trace(self, task: Task, state: RunState, data: RunData):
    out = {'rel_error': state.rel_err, 'step': state.step, 'epoch': state.aux.epoch}
    if data.target.factors is not None:
      out.update(core.alignment_trace(*self.export(task, state, data), data, task.order))
    return out


def beyond_lazy(*, lr=0.2, init_scale=1e-3, reinit_threshold=1e-2, epoch_length: int = 100, epoch_growth=1.5,
                reg=1e-4, signs: str = 'positive', optimizer: str = 'sgd', optimizer_kwargs=None,
                schedule: str = 'constant', schedule_kwargs=None) -> BeyondLazy:
  """The beyond-lazy reconstruction: 2-homogeneous GD from a small init with re-initialization in
  growing epochs, trained on T*/||T*||_F (module docstring; README "Beyond lazy" has how the defaults
  were measured). Every hyperparameter is dimensionless (normalized units).

  Args:
    lr: the step size in normalized units (a finite number > 0).
    init_scale: components start (and restart) at init_scale * Unif(S^{d-1}) (a finite number > 0).
    reinit_threshold: at each epoch start, real components with ||w_i|| below it are re-drawn (a finite number >= 0).
    epoch_length: steps of the first epoch (an integer >= 1; static: it sets the re-draw buffer's fill rate).
    epoch_growth: epoch e lasts round(epoch_length * epoch_growth^e) steps (a finite number >= 1).
    reg: l2 regularization reg/2 ||W||^2 in normalized units (a finite number >= 0).
    signs: the fixed signs s_i of the components: positive or balanced (+1, -1, ...).
    optimizer: an optax optimizer alias that takes learning_rate (sgd, adam, adamw, lion, ...).
    optimizer_kwargs: its other arguments, e.g. {'b1': 0.8} (checked against its signature).
    schedule: the step-size schedule: constant, cosine, warmup_cosine, linear, ... (overparam/optim.py).
    schedule_kwargs: the schedule's other arguments, e.g. {'warmup_steps': 100}.

  Returns a BeyondLazy value for overparam.fit (a pytree: lr, init_scale, reinit_threshold,
  epoch_growth, reg are its leaves). Raises errors.ArgumentError naming the argument.
  """
  checks.number('lr', lr, 0.0, True)
  checks.number('init_scale', init_scale, 0.0, True)
  checks.number('reinit_threshold', reinit_threshold, 0.0)
  epoch_length = checks.integer('epoch_length', epoch_length, 1)
  checks.number('epoch_growth', epoch_growth, 1.0)
  checks.number('reg', reg, 0.0)
  checks.choice('signs', signs, SIGNS)
  opt = optim.optimizer(optimizer, optimizer_kwargs, schedule, schedule_kwargs)
  return BeyondLazy(lr=lr, init_scale=init_scale, reinit_threshold=reinit_threshold, epoch_growth=epoch_growth,
                    reg=reg, epoch_length=epoch_length, signs=signs, optimizer=opt)


def words_per_run(alg: BeyondLazy, task: Task, dim: int, bucket: int, rank: int) -> int:
  """GD on the homogeneous model (d parameters per component) plus the (B, d) re-draw buffer."""
  return bucket * dim + memory.cp_model_words(task, alg.optimizer, dim, bucket, rank, per_comp=dim, terms=bucket)
