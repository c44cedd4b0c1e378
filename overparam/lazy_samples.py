"""The lazy (NTK) regime learning from samples: the network linearized at its init, on the training set.

The model is lazy.py's (same init W0, symmetric_init, ntk_scaling); the data are loss = 'samples'
(overparam/network.py). With F(W) = (f_{T(W)}(x_k))_k in R^n the network's outputs on the n training
points and its linearization F_lin(W) = F(W0) + J_F (W - W0) (jax.linearize, O(n m d) per product):

  `lazy` (LazySamples)            GD on 1/(2n) ||F_lin(W) - y||^2 from W0, step lr_scale / lambda_max,
                                  lambda_max of (1/n) J_F^T J_F by power iteration (optional Nesterov
                                  momentum), as lazy.Lazy does for the tensor loss.
  `lazy_exact` (LazyExactSamples) its limit, the min-norm least-squares solution
                                  W* = W0 + J_F^+ (y - F(W0)): kernel regression with the network's
                                  tangent kernel K(x, x') = J_F(x) J_F(x')^T (ridgeless; it
                                  interpolates when J_F has full row rank n). J_F (n, P) is built per neuron by
                                  forward mode and solved by lazy.min_norm_solve.

The learned function is linear in T: f_T(x) = <T, H_l(x)>, so F_lin(W) = <T_lin(W), H_l(x_k)> with
T_lin(W) = T(W0) + J_T (W - W0), the linearized tensor of lazy.py. Both classes therefore report it as
their dense model (d^l, lazy widths keep d small), and the row's rel_error = ||T_lin - T*|| / ||T*|| is
the exact float64 population error of the learned predictor, with no test set. Rows add
`train_error` (sqrt(2 L_n) / ||T*|| of F_lin on the training set) and, for lazy_exact, `feature_rank`
(the numerical rank of J_F, at most min(n, P)). Online (fresh samples every step) is not supported.
"""

import dataclasses
from typing import Optional

import jax
import jax.flatten_util
import jax.numpy as jnp

from overparam import algorithms, lazy, network, objectives


class _Outputs:
  """The network outputs of lazy._Linearized's model on the training set (a mixin of the classes below)."""

  def __post_init__(self):
    if self.sampling is None or self.sampling.online:
      raise ValueError('the lazy algorithms on samples need a fixed training set (sampling, online=False)')

  def _single_outputs(self, params, data: algorithms.RunData) -> jax.Array:
    c, v = objectives.canonical(params, self.spec.parametrization, data.signs)
    return network.outputs(self._scale(data) * c * data.mask, v, data.samples.x, self.spec.order)

  def outputs(self, params, data: algorithms.RunData) -> jax.Array:
    """F(W) = f_{T(W)}(x_k) on the training points, (n,)."""
    if self.symmetric_init:
      return self._single_outputs(params['plus'], data) - self._single_outputs(params['minus'], data)
    return self._single_outputs(params, data)

  def linearize_outputs(self, params0, data: algorithms.RunData):
    """(F(W0), the linear map dW -> J_F dW)."""
    return jax.linearize(lambda p: self.outputs(p, data), params0)

  def train_error(self, params, params0, f0, data: algorithms.RunData) -> jax.Array:
    """sqrt(1/n ||F_lin(W) - y||^2) / ||T*||."""
    _, lin = self.linearize_outputs(params0, data)
    r = f0 + lin(lazy._sub(params, params0)) - data.samples.y  # noqa: SLF001
    return jnp.sqrt(jnp.mean(r * r) / data.target_sq)

  def extras(self, state, data):
    te = self.train_error(state.params, state.params0, state.aux['f0'], data)
    return {**super().extras(state, data), 'train_error': te}


@dataclasses.dataclass(frozen=True)
class LazySamples(_Outputs, lazy.Lazy):
  """lazy.Lazy on the empirical loss: GD (its optimizer) on the linearized outputs, step lr_scale / lambda_max."""
  sampling: Optional[network.SampleSpec] = None

  def lambda_max(self, params0, data: algorithms.RunData) -> jax.Array:
    """Largest eigenvalue of (1/n) J_F^T J_F (the Hessian of the empirical loss) by power iteration."""
    _, lin = self.linearize_outputs(params0, data)
    lin_t = jax.linear_transpose(lin, params0)
    n = data.samples.y.shape[0]
    tiny = jnp.finfo(self.dtype).tiny
    normalize = lambda v: jax.tree.map(lambda x: x * jax.lax.rsqrt(jnp.maximum(lazy._sq(v), tiny)), v)  # noqa: SLF001
    v = normalize(lazy._probe_like(params0))  # noqa: SLF001
    v = jax.lax.fori_loop(0, self.power_iters, lambda _, v: normalize(lin_t(lin(v))[0]), v)
    return lazy._sq(lin(v)) / n  # noqa: SLF001

  def init(self, data: algorithms.RunData) -> algorithms.RunState:
    p0 = self.init_params(data)
    t0 = self.model(p0, data)
    f0 = self.outputs(p0, data)
    lam = self.lambda_max(p0, data)
    lr = self.lr_scale / lam
    rel = jnp.sqrt(jnp.mean((f0 - data.samples.y) ** 2) / data.target_sq)
    state = self._state(p0, p0, t0, data, rel, {'f0': f0, 'lr': lr, 'lambda_max': lam})
    return state._replace(opt_state=self._opt(lr).init(p0))

  def step(self, state: algorithms.RunState, data: algorithms.RunData) -> algorithms.RunState:
    _, lin = self.linearize_outputs(state.params0, data)

    def loss(p):
      r = state.aux['f0'] + lin(lazy._sub(p, state.params0)) - data.samples.y  # noqa: SLF001
      dl = 0.5 * jnp.mean(r * r)
      return dl, dl

    out, grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    return algorithms.guarded_update(state, out, grads, self._opt(state.aux['lr']), self.eps, self.steps,
                                     data.target_sq)


@dataclasses.dataclass(frozen=True)
class LazyExactSamples(_Outputs, lazy._Linearized):  # noqa: SLF001 - the same model as lazy.py's
  """Min-norm least squares on the samples (tangent-kernel regression); solved in `init`, `step` is a no-op."""
  sampling: Optional[network.SampleSpec] = None

  def output_jacobian(self, params, data: algorithms.RunData) -> jax.Array:
    """J_F of the undoubled model at `params`: (n, P), P = B x params per component, columns in
    jax.flatten_util.ravel_pytree order. Built per neuron by forward mode: O(n P d)."""
    scale = self._scale(data)
    order = self.spec.order
    x = data.samples.x

    def neuron(p_i, s_i, m_i):
      c, v = objectives.canonical(jax.tree.map(lambda a: a[None], p_i), self.spec.parametrization, s_i[None])
      return scale * m_i * c[0] * network.neurons(v, x, order)[:, 0]

    jac = jax.vmap(jax.jacfwd(neuron))(params, data.signs, data.mask)  # leaves (B, n, ...)
    n = x.shape[0]
    return jnp.concatenate([jnp.moveaxis(a, 1, 0).reshape(n, -1) for a in jax.tree.leaves(jac)], axis=1)

  def init(self, data: algorithms.RunData) -> algorithms.RunState:
    p0 = self.init_params(data)
    t0 = self.model(p0, data)
    f0 = self.outputs(p0, data)
    base = p0['plus'] if self.symmetric_init else p0
    jac = self.output_jacobian(base, data)
    n_params = data.width.astype(self.dtype) * lazy.params_per_component(self.spec.parametrization, self.dim)
    rank, delta_flat = lazy.min_norm_solve(jac, data.samples.y - f0, n_params)
    _, unravel = jax.flatten_util.ravel_pytree(base)
    delta = unravel(delta_flat)
    params = lazy.apply_step(p0, delta, self.symmetric_init)
    rel = self.train_error(params, p0, f0, data)
    return self._state(params, p0, t0, data, rel, {'f0': f0, 'feature_rank': rank})

  def step(self, state: algorithms.RunState, data: algorithms.RunData) -> algorithms.RunState:
    return state

  def extras(self, state, data):
    return {**super().extras(state, data), 'feature_rank': state.aux['feature_rank']}
