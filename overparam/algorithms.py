"""Training algorithms as pure per-run functions that the sweep engine vmaps and scans.

An algorithm is a frozen (hashable) dataclass subclassing `Algorithm`, the protocol the engine
(sweep.py, experiments.py) calls; see its docstring. `data` is a RunData: everything a run needs
besides its state (keys, mask, target). `gd` (the class GD) is registered by GD_SPEC
(overparam/registry.py).

Every step evaluates the loss it differentiates, so convergence (rel_error < eps) and
divergence (non-finite loss) are detected at the step where they happen, inside the compiled
program: a run's result never depends on how the scan is chunked or batched.
"""

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from overparam import config_lib, memory, metrics, objectives, optim, registry, tensors

RUNNING, CONVERGED, DIVERGED = 0, 1, 2
# In float32 the in-loop rel_error (the implicit loss is three O(||T*||^2) terms that cancel) is off
# by up to ~0.3% of itself at rel_error 1e-2 against the float64 value that finalize reports; a
# float32 run therefore stops at (1 - margin) eps so that its reported rel_error lands below eps.
F32_STOP_MARGIN = 0.01


class RunData(NamedTuple):
  """Per-run inputs (the leading run axis is added by the sweep engine).

  init_key, reinit_key: legacy uint32[2] PRNG keys. mask (B,): 1 for the run's m real components
  of the width bucket B. signs (B,): fixed signs of power/homogeneous. width: the true m (float).
  target: T*; target_sq: ||T*||^2.
  """
  init_key: jax.Array
  reinit_key: jax.Array
  mask: jax.Array
  signs: jax.Array
  width: jax.Array
  target: tensors.Target
  target_sq: jax.Array


class RunState(NamedTuple):
  params: Any
  opt_state: Any
  params0: Any          # W0, for movement and for the alpha-centred model
  step: jax.Array       # updates performed
  status: jax.Array     # RUNNING, CONVERGED or DIVERGED
  rel_err: jax.Array    # in-loop rel_error estimate at the last finite evaluation
  aux: Any = ()         # algorithm-specific state


class Algorithm:
  """What the engine calls on an algorithm (one run, unbatched; the engine vmaps and scans).

  steps: int                               the step budget (the engine scans ceil(steps / chunk) chunks)
  init(data) -> RunState                   required
  step(state, data) -> RunState            required; one update, a finished run is left unchanged
  export(state, data) -> (coeffs (K,), factors (K, d)) or None
                                           the learned CP tensor; K must be a multiple of the bucket B
                                           (block k holds B components, component i real iff i < width)
  dense_model(state, data) -> (d,)*l or None   the model tensor, for models that are not CP tensors
  extras(state, data) -> {name: scalar}    numbers for the results row (names in the spec's row_fields)
  trace(state, data) -> {name: array}      recorded every config.trace_every steps

  The optional methods default to None / {} here; the engine skips an output that is None.
  """
  steps: int

  def init(self, data: 'RunData') -> 'RunState':
    raise NotImplementedError

  def step(self, state: 'RunState', data: 'RunData') -> 'RunState':
    raise NotImplementedError

  def export(self, state: 'RunState', data: 'RunData') -> Optional[tuple]:
    return None

  def dense_model(self, state: 'RunState', data: 'RunData') -> Optional[jax.Array]:
    return None

  def extras(self, state: 'RunState', data: 'RunData') -> dict:
    return {}

  def trace(self, state: 'RunState', data: 'RunData') -> dict:
    return {'rel_error': state.rel_err, 'step': state.step}


def make_optimizer(optimizer, lr, steps: int = 1, **extra) -> optax.GradientTransformation:
  """optimizer: an optim.Optimizer or an optax alias name (default arguments, constant lr)."""
  return optim.as_optimizer(optimizer).make(lr, steps, **extra)


def guarded_update(state: RunState, loss_and_aux, grads, opt, eps: float, max_steps: int,
                   target_sq) -> RunState:
  """Applies one optimizer update unless the run is finished; records convergence/divergence.

  loss_and_aux = (total loss, data loss 1/2||T - T*||^2 of the model being reported). The run
  converges at rel_error < eps, less F32_STOP_MARGIN when the loss is float32.
  """
  total, dl = loss_and_aux
  rel = jnp.sqrt(jnp.maximum(2.0 * dl, 0.0) / target_sq)
  if rel.dtype == jnp.float32:
    eps = eps * (1.0 - F32_STOP_MARGIN)
  running = state.status == RUNNING
  finite = jnp.isfinite(total)
  converged = running & finite & (rel < eps)
  diverged = running & ~finite
  update = running & finite & ~converged & (state.step < max_steps)
  updates, new_opt = opt.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  pick = lambda new, old: optax.tree_utils.tree_where(update, new, old)
  return state._replace(
      params=pick(new_params, state.params),
      opt_state=pick(new_opt, state.opt_state),
      step=state.step + update.astype(state.step.dtype),
      status=jnp.where(diverged, DIVERGED, jnp.where(converged, CONVERGED, state.status)),
      rel_err=jnp.where(running & finite, rel, state.rel_err))


def alpha_model(params, params0, data: RunData, spec: objectives.Spec, alpha: float):
  """Canonical form of the model T(W0) + alpha (T(W) - T(W0)) (Chizat et al.): 2B components.

  With alpha = 1 it is T(W) itself (B components).
  """
  c, v = objectives.canonical(params, spec.parametrization, data.signs)
  if alpha == 1.0:
    return c * data.mask, v
  c0, v0 = objectives.canonical(params0, spec.parametrization, data.signs)
  return (jnp.concatenate([alpha * c * data.mask, (1.0 - alpha) * c0 * data.mask]),
          jnp.concatenate([v, v0]))


def linearization_gap(params, params0, data: RunData, spec: objectives.Spec, dim: int, alpha: float = 1.0,
                      dense_limit: int = 1 << 15) -> jax.Array:
  """||T_a(W) - T_a,lin(W)|| / ||T*|| for the alpha model T_a(W) = T(W0) + alpha (T(W) - T(W0)).

  T_a,lin(W) = T(W0) + alpha J_{W0} (W - W0), so the gap is alpha ||T(W) - T(W0) - J dW|| / ||T*||,
  dW = W - W0 (masked components excluded). Dense when d^l <= dense_limit (every run of a program
  holds its d^l arrays at once); otherwise implicit, O(m^2 d):
  with A(P, Q) = <T(P), T(Q)> = cp_inner, every term is A or a derivative of A along dW
  (<T(P), J dW> = d/dt A(P, W0 + t dW), ||J dW||^2 = d2/ds dt A(W0 + s dW, W0 + t dW)); its
  cancellation floor is about sqrt(machine eps) ||T|| / ||T*||.
  """
  order = spec.order

  def canon(p):
    c, v = objectives.canonical(p, spec.parametrization, data.signs)
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


def alignment_trace(coeffs, factors, data: RunData, order: int):
  """metrics.alignment of the model (coeffs, factors) against the target's CP structure, plus the
  target weights c*_j (so a trajectory file is self-contained)."""
  out = metrics.alignment(coeffs, factors, data.target.coeffs, data.target.factors, order)
  out['target_weight'] = data.target.coeffs
  return out


@dataclasses.dataclass(frozen=True)
class GD(Algorithm):
  """Gradient descent (optax) on the nonlinear model, with optional alpha-scaling.

  Minimizes 1/(2 alpha^2) ||T(W0) + alpha (T(W) - T(W0)) - T*||^2 + reg/2 ||W||^2;
  alpha = 1 is plain GD on L(W). As alpha grows, the trained model approaches the
  linearized (lazy) one with the same init and learning rate.
  """
  spec: objectives.Spec
  dim: int
  bucket: int
  steps: int
  lr: float
  optimizer: Any = optim.Optimizer()  # an optim.Optimizer, or an optax alias name
  init_scale: float = 0.3
  alpha: float = 1.0
  eps: float = 1e-2
  dtype: Any = jnp.float32

  def _opt(self):
    return make_optimizer(self.optimizer, self.lr, self.steps)

  def init(self, data: RunData) -> RunState:
    p = objectives.init_params(data.init_key, self.spec.parametrization, self.bucket, self.dim,
                               self.init_scale, self.dtype)
    return RunState(params=p, opt_state=self._opt().init(p), params0=p,
                    step=jnp.zeros((), jnp.int32), status=jnp.full((), RUNNING, jnp.int32),
                    rel_err=jnp.full((), jnp.inf, self.dtype))

  def loss(self, params, params0, data: RunData):
    c, v = alpha_model(params, params0, data, self.spec, self.alpha)
    dl = objectives.data_loss(c, v, data.target, self.spec.order, self.spec.loss)
    total = dl / self.alpha ** 2
    if self.spec.reg:
      total = total + self.spec.reg * objectives.regularizer(params, data.mask)
    return total, dl

  def step(self, state: RunState, data: RunData) -> RunState:
    out, grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, state.params0, data)
    return guarded_update(state, out, grads, self._opt(), self.eps, self.steps, data.target_sq)

  def export(self, state: RunState, data: RunData) -> Optional[tuple]:
    return alpha_model(state.params, state.params0, data, self.spec, self.alpha)

  def trace(self, state: RunState, data: RunData):
    out = {'rel_error': state.rel_err, 'step': state.step}
    if data.target.factors is not None:  # per true component: max |cos|, aligned weight (deflation)
      out.update(alignment_trace(*self.export(state, data), data, self.spec.order))
    return out

  def extras(self, state: RunState, data: RunData):
    return {'linearization_gap': linearization_gap(state.params, state.params0, data, self.spec, self.dim,
                                                   self.alpha)}


# ---------------------------------------------------------------------------------------------
# Registration of gd.

def build_gd(c, dim: int, bucket: int) -> GD:
  spec = objectives.Spec(c.order, c.parametrization, config_lib.resolve_loss(c), c.reg)
  return GD(spec=spec, dim=dim, bucket=bucket, steps=c.steps, lr=c.lr, optimizer=optim.from_config(c),
            init_scale=c.init_scale, alpha=c.alpha, eps=c.eps, dtype=config_lib.dtype_of(c))


def gd_words_per_run(c, dim: int, bucket: int, rank: int) -> int:
  """Parameters and their copies, optimizer state, and the loss's intermediates; the alpha model
  has 2B terms."""
  per_comp = memory.params_per_component(c.parametrization, dim)
  terms = 2 * bucket if c.alpha != 1 else bucket
  return memory.cp_model_words(c, dim, bucket, rank, per_comp=per_comp, terms=terms,
                               loss=config_lib.resolve_loss(c))


GD_SPEC = registry.AlgorithmSpec(
    name='gd', build=build_gd, words_per_run=gd_words_per_run,
    reads=('lr', 'init_scale', 'reg', 'alpha', 'parametrization', 'signs', 'loss') + optim.FIELDS,
    row_fields=('linearization_gap',), alpha_scaled=True)
