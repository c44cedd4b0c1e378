"""`overparam.fit` (this module: fitting): one run of an algorithm on one target, as a pure function.

    res = overparam.fit(overparam.beyond_lazy(), jax.random.PRNGKey(0), t, width=6)
    res.coeffs, res.factors, res.rel_error, res.status, res.steps

It composes with `jax.jit` and with `jax.vmap` over keys, over targets (a stack of same-shape tensors)
and over every numeric hyperparameter (an algorithm's leaves):

    errs = jax.vmap(lambda lr: overparam.fit(overparam.gd(lr=lr), key, t, width=6, steps=300).rel_error)(lrs)

traces and compiles once. Static: the shapes, the width, the step budget and the algorithm's choices.
The loop (stopping at eps, or at the plateau) runs inside the compiled program (`lax.while_loop`); it
is the loop the sweep engine runs (overparam/core.py: the same init and step).

Keys: init_key = fold_in(key, 1), reinit_key = fold_in(key, 2). The engine derives a seed's keys the
same way from PRNGKey(seed) (its target from fold_in(PRNGKey(seed), 0)), so fit(alg, PRNGKey(seed),
T*_seed, width=m) reproduces the results row of (seed, m) (tests/test_fit.py).

Called with concrete inputs, fit compiles its program ahead of time (cached per structure and shapes),
refuses it when XLA's own memory accounting of the program exceeds the free memory
(errors.ConfigError naming width), then runs it. Under the user's jit or vmap it is traced inline.
"""

import threading
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from overparam import core, inputs, memory, objectives, tensors
from overparam.errors import ConfigError

# The plateau rule of eps=None: stop when the in-loop rel_error has not improved by 0.1% (relative)
# for max(200, s) steps, s the step of its last such improvement (core.Task).
PLATEAU = (200, 1e-3)


class FitResult(NamedTuple):
  """The result of fit (a pytree; under vmap every field gets the batch axis).

  coeffs (m,), factors (m, d): the learned CP tensor T = sum_i coeffs_i factors_i^{(x)l} (gd with an
    alpha model: the 2m components of T(W0) + alpha (T(W) - T(W0))); None for the lazy algorithms,
    whose model is not a CP tensor.
  model (d,)*l: the lazy algorithms' dense model T_lin(W); None for the CP algorithms.
  rel_error (): ||T - T*||_F / ||T*||_F of the final model, in the run's dtype (objectives.rel_error).
  status (): int32, core.STATUS_NAMES: 1 converged (rel_error < eps), 0 max_steps (budget used),
    2 diverged (a non-finite loss or model), 3 plateau (eps=None: stopped improving), 4 unconfirmed
    (stopped by the in-loop test, a float32 estimate, but rel_error >= eps: use float64).
  steps (): updates performed.
  params, params0: the final W and the init W0 (the algorithm's parametrization).
  extras: the algorithm's own numbers (linearization_gap, epochs, tangent_rank, ...).
  """
  coeffs: Any
  factors: Any
  model: Any
  rel_error: Any
  status: Any
  steps: Any
  params: Any
  params0: Any
  extras: Any

  @property
  def status_name(self) -> str:
    """The status as a word (concrete results only)."""
    return core.STATUS_NAMES[int(self.status)]


def run_data(alg: core.Algorithm, task: core.Task, key, target: tensors.Target, width: int, eps) -> core.RunData:
  """The RunData of one run of `width` components (bucket = width) from `key` (see the module docstring)."""
  dtype = (target.dense if target.dense is not None else target.factors).dtype
  target_sq = tensors.target_sq_norm(target, task.order)  # of the target as given (the engine does the same)
  if (alg.needs_dense_target or task.loss == 'dense') and target.dense is None:
    target = target._replace(dense=tensors.dense_cp(target.coeffs, target.factors, task.order))
  return core.RunData(
      init_key=jax.random.fold_in(key, 1), reinit_key=jax.random.fold_in(key, 2),
      mask=jnp.ones((width,), dtype), width=jnp.asarray(width, dtype), target=target,
      target_sq=target_sq.astype(dtype), stop_eps=jnp.asarray(0.0 if eps is None else eps, dtype))


def _program(alg: core.Algorithm, task: core.Task, width: int, key, target: tensors.Target, eps) -> FitResult:
  """The whole run, from the inputs to the FitResult (one compiled program)."""
  data = run_data(alg, task, key, target, width, eps)
  state = alg.init(task, data)
  state = jax.lax.while_loop(lambda s: core.live(task, s), lambda s: alg.step(task, s, data), state)
  return result(alg, task, state, data, eps)


def result(alg: core.Algorithm, task: core.Task, state: core.RunState, data: core.RunData, eps) -> FitResult:
  """The FitResult of a finished state (jittable)."""
  exported = alg.export(task, state, data)
  model = alg.dense_model(task, state, data)
  if exported is not None:
    coeffs, factors = exported
    rel = objectives.rel_error(coeffs, factors, data.target, task.order)
  else:
    coeffs = factors = None
    t_star = objectives.dense_target(data.target, task.order)
    rel = jnp.sqrt(jnp.sum((model - t_star) ** 2) / jnp.sum(t_star ** 2))
  status = core.final_status(state.status, rel, jnp.asarray(0.0 if eps is None else eps, rel.dtype))
  return FitResult(coeffs=coeffs, factors=factors, model=model, rel_error=rel, status=status.astype(jnp.int32),
                   steps=state.step, params=state.params, params0=state.params0,
                   extras=alg.extras(task, state, data))


def _batched(alg: core.Algorithm, task: core.Task, width: int, keys, targets: tensors.Target, eps) -> FitResult:
  """_program over a batch of targets (leading axis n) and restarts (keys (k,)): leaves (n, k, ...)."""
  per_target = lambda t: jax.vmap(lambda k: _program(alg, task, width, k, t, eps))(keys)
  return jax.vmap(per_target)(targets)


_program_jit = jax.jit(_program, static_argnums=(1, 2))
_PROGRAMS = {'one': _program_jit, 'batched': jax.jit(_batched, static_argnums=(1, 2))}
_EXECUTABLES = {}
_LOCK = threading.Lock()


def _traced(*trees) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def fit(algorithm: core.Algorithm, key, target, *, width: int, steps: int = core.DEFAULT_STEPS,
        eps=core.DEFAULT_EPS, plateau: Optional[tuple] = None) -> FitResult:
  """Fits `target` with `width` components of `algorithm` from `key`; returns a FitResult.

  algorithm: a value of overparam.gd / beyond_lazy / lazy / lazy_exact (or a registered algorithm).
  key: a PRNG key (jax.random.PRNGKey or jax.random.key).
  target: a dense symmetric array (d,)*l, trained with the dense loss (O(m d^l) per step), or a
    tensors.CPTensor(coeffs (r,), factors (r, d), order) / a tuple (coeffs, factors, order), trained
    with the implicit loss (O(m^2 d + m r d) per step; T* is never formed densely, except by the lazy
    algorithms, whose model is dense).
  width: m >= 1 (static). steps: the step budget (static; default 2000).
  eps: the run stops at rel_error < eps and is `converged` iff its final rel_error < eps (default 0.05;
    a number in (0, 1), may be traced). None: train to the noise floor, stopping when rel_error has not
    improved by `plateau`[1] (relative) for max(`plateau`[0], s) steps, s the step of its last such
    improvement (default fitting.PLATEAU = (200, 1e-3)); status `plateau`.

  Raises (before anything is compiled) errors.ArgumentError / TargetError naming the argument: an
  algorithm that is not one, width < 1, steps < 0, eps outside (0, 1), a target that is not a finite
  symmetric (d,)*l array or CP tensor; and ConfigError when the program would not fit in memory.
  """
  task, t, width, eps, alg = prepare(algorithm, target, width, steps, eps, plateau)
  if _traced(alg, key, t, eps):
    return _program_jit(alg, task, width, key, t, eps)
  return executable(alg, task, width, key, t, eps)(alg, key, t, eps)


def executable(alg, task: core.Task, width: int, key, target, eps, kind: str = 'one'):
  """The compiled program of (kind, alg's structure, task, width, the inputs' shapes), compiled once and
  cached; its memory is checked against the free memory before it is first returned. Call it as
  exe(alg, key, target, eps). kind: 'one' (fit) or 'batched' (keys (k,), targets with a leading axis n:
  results (n, k, ...); overparam.decompose_many)."""
  leaves, treedef = jax.tree.flatten((alg, key, target, eps))
  cache_key = (kind, treedef, task, width, tuple(jax.typeof(x) for x in leaves))
  with _LOCK:
    exe = _EXECUTABLES.get(cache_key)
  if exe is None:
    compiled = _PROGRAMS[kind].lower(alg, task, width, key, target, eps).compile()
    check_memory(compiled, width)
    exe = compiled
    with _LOCK:
      _EXECUTABLES[cache_key] = exe
  return exe


def prepare(algorithm, target, width, steps, eps, plateau):
  """The checked inputs of a run: (task, target as a tensors.Target, width, eps, algorithm cast to the
  run dtype). Raises the errors fit documents."""
  inputs.algorithm(algorithm, core.Algorithm)
  width = inputs.width(width)
  steps = inputs.steps(steps)
  eps = inputs.eps(eps)
  t, order, loss = inputs.as_target(target)
  dtype = (t.dense if t.dense is not None else t.factors).dtype
  return make_task(order, loss, steps, eps, plateau), t, width, eps, core.as_leaves(algorithm, dtype)


def make_task(order: int, loss: str, steps: int, eps, plateau) -> core.Task:
  """The core.Task of a run of checked inputs: eps=None trains to the plateau rule (`plateau`, default
  PLATEAU), else no plateau rule."""
  window = (tuple(plateau) if plateau is not None else PLATEAU) if eps is None else None
  return core.Task(order=order, loss=loss, steps=steps, plateau=window)


def check_memory(compiled, width: int, limit: int = 0):
  """ConfigError when XLA's accounting of a compiled program (arguments, outputs and temporaries)
  exceeds `limit` bytes (default: the free memory of one device)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - a backend without memory analysis: nothing to check
    return
  if stats is None:
    return
  need = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
          - stats.alias_size_in_bytes)
  limit = limit or memory.available_bytes()
  if need > limit:
    raise ConfigError(f'width={width}: the program needs about {need / 2 ** 30:.3g} GiB > {limit / 2 ** 30:.3g} GiB '
                      'available (XLA\'s accounting of the compiled run); use a smaller width')
