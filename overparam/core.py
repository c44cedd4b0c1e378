"""One definition of a run: the protocol every algorithm implements and every client runs.

A run fits one target with one algorithm value at one width:

    state = alg.init(task, data)
    while state.status == RUNNING and state.step < task.steps:
      state = alg.step(task, state, data)          # a finished run is left unchanged
    export / dense_model / extras(task, state, data)

`overparam.fit` runs that loop in a `lax.while_loop`; the sweep engine (overparam/engine.py) vmaps the
very same `init` and `step` over the runs of a program and scans them in chunks. So the CLI and the
library cannot drift: they call the same functions.

- `Task` (static, hashable): what is fitted and for how long: order l, loss kind, step budget,
  the samples spec of loss = 'samples', and the optional plateau rule.
- `RunData` (arrays, one run; the engine stacks runs on a leading axis): PRNG keys, the component
  mask of the width bucket B, the true width, T*, ||T*||^2, the in-loop stopping threshold, samples.
- An algorithm is a frozen dataclass registered as a pytree (`register`): its numeric
  hyperparameters are leaves (traced under jit and vmap, so a new learning rate is not a new
  compilation and a sweep over learning rates is a vmapped axis), its choices are static fields
  (`static()`: parametrization, optimizer name, ...).

Every step evaluates the loss it differentiates, so convergence (rel_error < stop_eps) and divergence
(a non-finite loss) are detected at the step where they happen, inside the compiled loop: a run's
result does not depend on how the loop is chunked or batched.
"""

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from overparam import metrics, network, objectives, optim, tensors

# In-loop status codes (RunState.status). STOPPED: finished without an in-loop verdict (a closed-form
# solver such as lazy_exact); its reported status is decided by its rel_error alone.
RUNNING, CONVERGED, DIVERGED, PLATEAU, STOPPED = 0, 1, 2, 3, 5
# Final status codes (fit's result, and the rows' `status` names); a run still RUNNING at the end of the
# loop used its whole budget.
MAX_STEPS, UNCONFIRMED = 0, 4
STATUS_NAMES = {MAX_STEPS: 'max_steps', CONVERGED: 'converged', DIVERGED: 'diverged', PLATEAU: 'plateau',
                UNCONFIRMED: 'unconfirmed'}

# In float32 the in-loop rel_error (the implicit loss is three O(||T*||^2) terms that cancel) is off
# by up to ~0.3% of itself at rel_error 1e-2 against the float64 value reported; a float32 run therefore
# stops at (1 - margin) stop_eps so that its reported rel_error lands below eps.
F32_STOP_MARGIN = 0.01

# Defaults of fit, decompose and the config (config_lib.base_config reads them from here).
DEFAULT_STEPS = 2000
DEFAULT_EPS = 0.05

LOSSES = ('dense', 'implicit', 'samples')


def static(default=dataclasses.MISSING):
  """A dataclass field that is a static choice (pytree metadata), not a traced hyperparameter."""
  return dataclasses.field(default=default, metadata={'static': True})


def register(cls):
  """Registers a frozen dataclass as a pytree: fields made with static() are metadata (hashable,
  part of the compiled program's identity), every other field is a leaf (a number or an array)."""
  fields = dataclasses.fields(cls)
  jax.tree_util.register_dataclass(
      cls, data_fields=[f.name for f in fields if not f.metadata.get('static')],
      meta_fields=[f.name for f in fields if f.metadata.get('static')])
  return cls


@dataclasses.dataclass(frozen=True)
class Task:
  """What a run fits and how long (static: part of the compiled program).

  order: l >= 2. loss: 'dense' (O(m d^l) per step), 'implicit' (O(m^2 d + m r d); needs a factored
  target) or 'samples' (the network's empirical loss; `sampling` describes the data). steps: the step
  budget. plateau: None, or (window, rel_tol): stop when the in-loop rel_error has not fallen below
  (1 - rel_tol) times its best value for max(window, s) steps, s the step of that best value: the
  patience doubles the run at least, so slow phases (saddles, deflation) are not taken for the noise
  floor of a noisy target (status `plateau`).
  """
  order: int
  loss: str = 'implicit'
  steps: int = DEFAULT_STEPS
  sampling: Optional[network.SampleSpec] = None
  plateau: Optional[Tuple[int, float]] = None

  def __post_init__(self):
    if not isinstance(self.order, int) or self.order < 2:
      raise ValueError(f'order must be an integer >= 2, got {self.order!r}')
    if self.loss not in LOSSES:
      raise ValueError(f'loss must be one of {LOSSES}, got {self.loss!r}')
    if (self.loss == 'samples') != (self.sampling is not None):
      raise ValueError('sampling is given exactly when loss is samples')
    if not isinstance(self.steps, int) or self.steps < 0:
      raise ValueError(f'steps must be an integer >= 0, got {self.steps!r}')


class RunData(NamedTuple):
  """One run's inputs (the engine adds a leading run axis to every leaf).

  init_key, reinit_key: PRNG keys (component i of the init from fold_in(init_key, i)).
  mask (B,): 1 for the run's m real components of the width bucket B, 0 for padding.
  width (): the true m, as a float of the run dtype. target: T* (tensors.Target); target_sq: ||T*||^2.
  stop_eps (): the in-loop threshold the run stops at (rel_error < stop_eps, or the training error
    for loss = 'samples').
  samples, sample_key: loss = 'samples' only (else None): the fixed training set (network.Samples;
    None when online) and the key of the run's batches.
  dim_mask: None, or (D,) with 1 on the run's d real coordinates when its program is built at a
    padded D (config.pad_dims; only for algorithms whose registry spec has pads_dims): T*'s factors
    are zero-padded to D, and the algorithm's draws use only the real coordinates.
  """
  init_key: jax.Array
  reinit_key: jax.Array
  mask: jax.Array
  width: jax.Array
  target: tensors.Target
  target_sq: jax.Array
  stop_eps: jax.Array
  samples: Any = None
  sample_key: Any = None
  dim_mask: Any = None


class RunState(NamedTuple):
  """params: W; params0: W0 (movement, the alpha-centred and the linearized models); step: updates
  performed; status: RUNNING, CONVERGED, DIVERGED or PLATEAU; rel_err: the in-loop rel_error at the last
  finite evaluation; best, best_step: the plateau rule's reference value and the step it was set;
  aux: the algorithm's own state."""
  params: Any
  opt_state: Any
  params0: Any
  step: jax.Array
  status: jax.Array
  rel_err: jax.Array
  best: jax.Array
  best_step: jax.Array
  aux: Any = ()


def dims_of(data: RunData) -> Tuple[int, int]:
  """(bucket B, dimension d) of one run's data."""
  t = data.target
  d = t.factors.shape[-1] if t.factors is not None else t.dense.shape[-1]
  return data.mask.shape[-1], d


def dtype_of(data: RunData):
  return data.target_sq.dtype


def signs_vector(signs: str, bucket: int, dtype) -> jax.Array:
  """Fixed signs of the power/homogeneous parametrizations: 'positive' all +1, 'balanced' +1, -1, +1, ..."""
  if signs == 'balanced':
    return jnp.where(jnp.arange(bucket) % 2 == 0, 1.0, -1.0).astype(dtype)
  return jnp.ones((bucket,), dtype)


def new_state(params, opt_state, params0, dtype, rel_err=None, aux=()) -> RunState:
  """A RUNNING state at step 0."""
  rel = jnp.full((), jnp.inf, dtype) if rel_err is None else jnp.asarray(rel_err, dtype)
  return RunState(params=params, opt_state=opt_state, params0=params0, step=jnp.zeros((), jnp.int32),
                  status=jnp.full((), RUNNING, jnp.int32), rel_err=rel, best=jnp.full((), jnp.inf, dtype),
                  best_step=jnp.zeros((), jnp.int32), aux=aux)


class Algorithm:
  """What fit and the engine call on an algorithm (one run, unbatched; the engine vmaps and scans).

  init(task, data) -> RunState                 required
  step(task, state, data) -> RunState          required; one update; a finished run is left unchanged
  export(task, state, data) -> (coeffs (K,), factors (K, d)) or None
                                               the learned CP tensor; K is a multiple of the bucket B
                                               (block k holds B components, component i real iff i < width)
  dense_model(task, state, data) -> (d,)*l or None   the model tensor, for models that are not CP tensors
  extras(task, state, data) -> {name: scalar}  numbers for the results row
  trace(task, state, data) -> {name: array}    recorded every trace_every steps by the engine
  needs_dense_target                           T* is formed densely once before the run (not per step)
  unify(algs)                                  algorithm values of one program made structurally equal
  compiler_options(task, fn, data) -> dict or None   XLA options for the engine's fn ('init', 'chunk',
                                               'finish'); from static fields and shapes only
  retry(task, state) -> Algorithm or None      the engine reruns a one-program algorithm's program with
                                               the value returned (e.g. a factorization that needs more room)

  Subclasses are frozen dataclasses registered with `register`.
  """
  needs_dense_target = False

  def init(self, task: Task, data: RunData) -> RunState:
    raise NotImplementedError

  def step(self, task: Task, state: RunState, data: RunData) -> RunState:
    raise NotImplementedError

  def export(self, task: Task, state: RunState, data: RunData) -> Optional[tuple]:
    return None

  def dense_model(self, task: Task, state: RunState, data: RunData) -> Optional[jax.Array]:
    return None

  def extras(self, task: Task, state: RunState, data: RunData) -> dict:
    return {}

  def trace(self, task: Task, state: RunState, data: RunData) -> dict:
    return {'rel_error': state.rel_err, 'step': state.step}

  def compiler_options(self, task: Task, fn: str, data: RunData) -> Optional[dict]:
    """XLA compile options of the engine's `fn` ('init', 'chunk' or 'finish') of this algorithm's
    program (jax.jit(compiler_options=...)); None: XLA's defaults. `data` is one run's RunData: only
    its shapes may be used, and of the algorithm only its static fields (its leaves are batched)."""
    return None

  def retry(self, task: Task, state: RunState) -> Optional['Algorithm']:
    """After a one-program algorithm's program (registry one_program): None, or the algorithm value the
    engine's caller reruns the whole program with (state: the host RunState, leading run axis)."""
    return None

  @classmethod
  def unify(cls, algs: Sequence['Algorithm']) -> list:
    """Algorithm values that one program runs side by side (a hyperparameter axis), made to share one
    pytree structure (e.g. a cheaper static path taken by some values only is turned off). Default:
    unchanged; the engine refuses values whose structures still differ."""
    return list(algs)


def make_optimizer(optimizer, lr, steps: int, **extra) -> optax.GradientTransformation:
  """optimizer: an optim.Optimizer or an optax alias name (default arguments, constant lr)."""
  return optim.as_optimizer(optimizer).make(lr, steps, **extra)


def guarded_update(task: Task, state: RunState, loss_and_aux, grads, opt, data: RunData,
                   target_sq=None) -> RunState:
  """Applies one optimizer update unless the run is finished; records convergence, divergence and
  the plateau rule.

  loss_and_aux = (total loss, data loss 1/2||T - T*||^2 of the model being reported); target_sq: the
  normalization of rel_error (default data.target_sq). The run converges at rel_error < data.stop_eps,
  less F32_STOP_MARGIN when the loss is float32.
  """
  total, dl = loss_and_aux
  target_sq = data.target_sq if target_sq is None else target_sq
  rel = jnp.sqrt(jnp.maximum(2.0 * dl, 0.0) / target_sq)
  eps = data.stop_eps.astype(rel.dtype)
  if rel.dtype == jnp.float32:
    eps = eps * (1.0 - F32_STOP_MARGIN)
  running = state.status == RUNNING
  finite = jnp.isfinite(total)
  converged = running & finite & (rel < eps)
  diverged = running & ~finite
  best, best_step = state.best, state.best_step
  plateau = jnp.zeros((), bool)
  if task.plateau is not None:
    window, tol = task.plateau
    better = running & finite & (rel < best * (1.0 - tol))
    best = jnp.where(better, rel, best)
    best_step = jnp.where(better, state.step, best_step)
    # patience grows with the run: no progress in max(window, steps it took to the last progress) steps
    plateau = running & finite & ~converged & (state.step - best_step >= jnp.maximum(window, best_step))
  update = running & finite & ~converged & ~plateau & (state.step < task.steps)
  updates, new_opt = opt.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  pick = lambda new, old: optax.tree_utils.tree_where(update, new, old)
  status = jnp.where(diverged, DIVERGED, jnp.where(converged, CONVERGED, jnp.where(plateau, PLATEAU, state.status)))
  return state._replace(
      params=pick(new_params, state.params), opt_state=pick(new_opt, state.opt_state),
      step=state.step + update.astype(state.step.dtype), status=status.astype(state.status.dtype),
      rel_err=jnp.where(running & finite, rel, state.rel_err), best=best, best_step=best_step)


def live(task: Task, state: RunState) -> jax.Array:
  """Whether a run still has steps to take."""
  return (state.status == RUNNING) & (state.step < task.steps)


def final_status(in_loop, rel_error, eps, xp=jnp):
  """The reported status code: DIVERGED when rel_error is not finite (or the run diverged), CONVERGED
  iff rel_error < eps, PLATEAU when the plateau rule stopped it, UNCONFIRMED when the in-loop test
  stopped it as converged but rel_error >= eps (use float64), else MAX_STEPS. xp: jnp or numpy (rows)."""
  in_loop = xp.asarray(in_loop)
  rel = xp.asarray(rel_error)
  bad = (~xp.isfinite(rel)) | (in_loop == DIVERGED)
  ok = rel < eps
  out = xp.where(in_loop == CONVERGED, UNCONFIRMED, xp.where(in_loop == PLATEAU, PLATEAU, MAX_STEPS))
  return xp.where(bad, DIVERGED, xp.where(ok, CONVERGED, out))


# ----------------------------------------------------------------------------------------------
# Pieces several algorithms share.

def with_step_samples(task: Task, data: RunData, step) -> RunData:
  """data with `samples` = the batch the update at `step` uses (loss = 'samples'; else data itself)."""
  if task.loss != 'samples':
    return data
  _, dim = dims_of(data)
  return data._replace(samples=network.step_samples(data, step, task.sampling, task.order, dim, dtype_of(data)))


def sample_extras(task: Task, exported, state: RunState, data: RunData):
  """{'train_error': ...} for loss = 'samples' (else {}): sqrt(2 L_n) / ||T*|| of the exported model on
  the training set, or online on batch `state.step` + 1, the fresh batch of the step that would come
  next (an unbiased estimate of the population error). It is the number the in-loop stopping rule
  compares with the run's stop_eps."""
  if task.loss != 'samples':
    return {}
  _, dim = dims_of(data)
  s = network.step_samples(data, state.step, task.sampling, task.order, dim, dtype_of(data))
  return {'train_error': network.relative_sample_error(*exported, s, task.order, data.target_sq)}


def alignment_trace(coeffs, factors, data: RunData, order: int):
  """metrics.alignment of the model against the target's CP structure, plus the target weights c*_j
  (so a trajectory file is self-contained)."""
  out = metrics.alignment(coeffs, factors, data.target.coeffs, data.target.factors, order)
  out['target_weight'] = data.target.coeffs
  return out


def as_leaves(alg, dtype):
  """alg with every hyperparameter leaf cast to the run dtype, so that a float64 argument cannot
  promote a float32 run (or a Python int make an integer step). Concrete leaves become numpy arrays
  (no device work), traced ones are cast in the trace."""
  cast = lambda x: jnp.asarray(x, dtype) if isinstance(x, jax.core.Tracer) else np.asarray(x, dtype)
  return jax.tree.map(cast, alg)


def stack_leaves(algs: Sequence[Algorithm], dtype) -> Algorithm:
  """One algorithm value whose leaves carry a leading axis over `algs` (same structure), as numpy."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x, dtype) for x in xs]), *algs)
