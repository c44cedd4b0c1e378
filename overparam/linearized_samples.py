"""The lazy (NTK) regime learning from samples: the network linearized at its init, on the training set.

The model is linearized.py's (same init W0, symmetric_init, ntk_scaling); the data are loss = 'samples'
(overparam/network.py). With F(W) = (f_{T(W)}(x_k))_k in R^n the network's outputs on the n training
points and its linearization F_lin(W) = F(W0) + J_F (W - W0) (jax.linearize, O(n m d) per product):

  `lazy` (LazySamples)            GD on 1/(2n) ||F_lin(W) - y||^2 from W0, step lr_scale / lambda_max,
                                  lambda_max of (1/n) J_F^T J_F by power iteration (optional Nesterov
                                  momentum), as linearized.Lazy does for the tensor loss.
  `lazy_exact` (LazyExactSamples) its limit, the min-norm least-squares solution
                                  W* = W0 + J_F^+ (y - F(W0)): kernel regression with the network's
                                  tangent kernel K(x, x') = J_F(x) J_F(x')^T (ridgeless; it
                                  interpolates when J_F has full row rank n). J_F (n, P) is built per neuron by
                                  forward mode and solved by lstsq.min_norm_solve.

The learned function is linear in T: f_T(x) = <T, H_l(x)>, so F_lin(W) = <T_lin(W), H_l(x_k)> with
T_lin(W) = T(W0) + J_T (W - W0), the linearized tensor of linearized.py. Both classes therefore report it as
their dense model (d^l, lazy widths keep d small), and the row's rel_error = ||T_lin - T*|| / ||T*|| is
the exact float64 population error of the learned predictor, with no test set. Rows add
`train_error` (sqrt(2 L_n) / ||T*|| of F_lin on the training set) and, for lazy_exact, `feature_rank`
(the numerical rank of J_F, at most min(n, P)). Online (fresh samples every step) is not supported.
"""

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp

from overparam import core, linearized, lstsq, memory, network, objectives
from overparam.core import RunData, RunState, Task


class _Outputs:
  """The network outputs of linearized.Linearized's model on the training set (a mixin of the classes below)."""

  def _single_outputs(self, task: Task, params, data: RunData) -> jax.Array:
    c, v = objectives.canonical(params, self.parametrization, self._signs(data))
    return network.outputs(self._scale(data) * c * data.mask, v, data.samples.x, task.order)

  def outputs(self, task: Task, params, data: RunData) -> jax.Array:
    """F(W) = f_{T(W)}(x_k) on the training points, (n,)."""
    if self.symmetric_init:
      return self._single_outputs(task, params['plus'], data) - self._single_outputs(task, params['minus'], data)
    return self._single_outputs(task, params, data)

  def linearize_outputs(self, task: Task, params0, data: RunData):
    """(F(W0), the linear map dW -> J_F dW)."""
    return jax.linearize(lambda p: self.outputs(task, p, data), params0)

  def train_error(self, task: Task, params, params0, f0, data: RunData) -> jax.Array:
    """sqrt(1/n ||F_lin(W) - y||^2) / ||T*||."""
    _, lin = self.linearize_outputs(task, params0, data)
    r = f0 + lin(linearized._sub(params, params0)) - data.samples.y  # noqa: SLF001
    return jnp.sqrt(jnp.mean(r * r) / data.target_sq)

  def extras(self, task: Task, state: RunState, data: RunData):
    te = self.train_error(task, state.params, state.params0, state.aux['f0'], data)
    return {**super().extras(task, state, data), 'train_error': te}


def _check(task: Task):
  if task.sampling is None or task.sampling.online:
    raise ValueError('the lazy algorithms on samples need a fixed training set (loss=samples, online=False)')


@core.register
@dataclasses.dataclass(frozen=True)
class LazySamples(_Outputs, linearized.Lazy):
  """linearized.Lazy on the empirical loss: GD (its optimizer) on the linearized outputs, step lr_scale / lambda_max."""

  def lambda_max(self, task: Task, params0, data: RunData) -> jax.Array:
    """Largest eigenvalue of (1/n) J_F^T J_F (the Hessian of the empirical loss) by power iteration."""
    _, lin = self.linearize_outputs(task, params0, data)
    lin_t = jax.linear_transpose(lin, params0)
    n = data.samples.y.shape[0]
    tiny = jnp.finfo(core.dtype_of(data)).tiny
    normalize = lambda v: jax.tree.map(lambda x: x * jax.lax.rsqrt(jnp.maximum(linearized._sq(v), tiny)), v)  # noqa: SLF001
    v = normalize(linearized._probe_like(params0))  # noqa: SLF001
    v = jax.lax.fori_loop(0, self.power_iters, lambda _, v: normalize(lin_t(lin(v))[0]), v)
    return linearized._sq(lin(v)) / n  # noqa: SLF001

  def init(self, task: Task, data: RunData) -> RunState:
    _check(task)
    p0 = self.init_params(data)
    t0 = self.model(task, p0, data)
    f0 = self.outputs(task, p0, data)
    lam = self.lambda_max(task, p0, data)
    lr = self.lr_scale / lam
    rel = jnp.sqrt(jnp.mean((f0 - data.samples.y) ** 2) / data.target_sq)
    state = self._state(p0, p0, t0, data, rel, {'f0': f0, 'lr': lr, 'lambda_max': lam})
    return state._replace(opt_state=self._opt(task, lr).init(p0))

  def step(self, task: Task, state: RunState, data: RunData) -> RunState:
    _, lin = self.linearize_outputs(task, state.params0, data)

    def loss(p):
      r = state.aux['f0'] + lin(linearized._sub(p, state.params0)) - data.samples.y  # noqa: SLF001
      dl = 0.5 * jnp.mean(r * r)
      return dl, dl

    out, grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    return core.guarded_update(task, state, out, grads, self._opt(task, state.aux['lr']), data)


@core.register
@dataclasses.dataclass(frozen=True)
class LazyExactSamples(_Outputs, linearized.Linearized):
  """Min-norm least squares on the samples (tangent-kernel regression); solved in `init` (status
  STOPPED), `step` is a no-op."""

  def output_jacobian(self, task: Task, params, data: RunData) -> jax.Array:
    """J_F of the undoubled model at `params`: (n, P), P = B x params per component, columns in
    jax.flatten_util.ravel_pytree order. Built per neuron by forward mode: O(n P d)."""
    scale = self._scale(data)
    x = data.samples.x

    def neuron(p_i, s_i, m_i):
      c, v = objectives.canonical(jax.tree.map(lambda a: a[None], p_i), self.parametrization, s_i[None])
      return scale * m_i * c[0] * network.neurons(v, x, task.order)[:, 0]

    jac = jax.vmap(jax.jacfwd(neuron))(params, self._signs(data), data.mask)  # leaves (B, n, ...)
    n = x.shape[0]
    return jnp.concatenate([jnp.moveaxis(a, 1, 0).reshape(n, -1) for a in jax.tree.leaves(jac)], axis=1)

  def init(self, task: Task, data: RunData) -> RunState:
    _check(task)
    _, dim = core.dims_of(data)
    p0 = self.init_params(data)
    t0 = self.model(task, p0, data)
    f0 = self.outputs(task, p0, data)
    base = p0['plus'] if self.symmetric_init else p0
    jac = self.output_jacobian(task, base, data)
    n_params = data.width.astype(jac.dtype) * memory.params_per_component(self.parametrization, dim)
    rank, delta_flat = lstsq.min_norm_solve(jac, data.samples.y - f0, n_params)
    _, unravel = jax.flatten_util.ravel_pytree(base)
    params = linearized.apply_step(p0, unravel(delta_flat), self.symmetric_init)
    rel = self.train_error(task, params, p0, f0, data)
    state = self._state(params, p0, t0, data, rel, {'f0': f0, 'feature_rank': rank})
    return state._replace(status=jnp.full_like(state.status, core.STOPPED))

  def step(self, task: Task, state: RunState, data: RunData) -> RunState:
    return state

  def extras(self, task: Task, state: RunState, data: RunData):
    return {**super().extras(task, state, data), 'feature_rank': state.aux['feature_rank']}


def on_samples(alg):
  """The samples variant of a lazy algorithm value (same fields): LazySamples for linearized.Lazy,
  LazyExactSamples for linearized.LazyExact (whose grid path is for tensor targets only)."""
  fields = {f.name: getattr(alg, f.name) for f in dataclasses.fields(linearized.Linearized)}
  if isinstance(alg, linearized.Lazy):
    return LazySamples(**fields, lr_scale=alg.lr_scale, momentum=alg.momentum, power_iters=alg.power_iters,
                       optimizer=alg.optimizer, momentum_model=alg.momentum_model)
  return LazyExactSamples(**fields)
