"""The built-in algorithms: their constructors and their registry entries (one AlgorithmSpec each).

  gd           overparam/gradient_descent.py           gradient descent on the nonlinear model (alpha-scaling)
  beyond_lazy  overparam/beyond_lazy_gd.py  the beyond-lazy reconstruction (small init, re-initialization)
  lazy         overparam/linearized.py         gradient descent on the jax.linearize model
  lazy_exact   overparam/linearized.py         the exact lazy optimum (min-norm least squares on J)

Importing this module registers them (config_lib imports it). Adding an algorithm: one module with
its class and constructor, and one AlgorithmSpec here or in the user's own code
(docs/ADDING_AN_ALGORITHM.md).
"""

from overparam import beyond_lazy_gd, gradient_descent, linearized, linearized_samples, registry

gd = gradient_descent.gd
beyond_lazy = beyond_lazy_gd.beyond_lazy
lazy = linearized.lazy
lazy_exact = linearized.lazy_exact

_OPTIMIZER = {a: a for a in ('optimizer', 'optimizer_kwargs', 'schedule', 'schedule_kwargs')}
_MODEL = {'init_scale': 'init_scale', 'parametrization': 'parametrization', 'signs': 'signs',
          'symmetric_init': 'lazy.symmetric_init', 'ntk_scaling': 'lazy.ntk_scaling'}


def _on_samples(alg, task):
  return linearized_samples.on_samples(alg) if task.loss == 'samples' else alg


GD_SPEC = registry.AlgorithmSpec(
    name='gd', make=gd,
    fields={'lr': 'lr', 'init_scale': 'init_scale', 'reg': 'reg', 'alpha': 'alpha',
            'parametrization': 'parametrization', 'signs': 'signs', **_OPTIMIZER},
    row_fields=('linearization_gap', 'train_error'), words_per_run=gradient_descent.words_per_run,
    samples=True, online=True, alpha_scaled=True, pads_dims=True)

BEYOND_LAZY_SPEC = registry.AlgorithmSpec(
    name='beyond_lazy', make=beyond_lazy,
    fields={**{a: f'beyond_lazy.{a}' for a in ('lr', 'init_scale', 'reinit_threshold', 'epoch_length',
                                                'epoch_growth', 'reg')},
            'signs': 'signs', **_OPTIMIZER},
    row_fields=('epochs', 'reinitialized', 'train_error'), words_per_run=beyond_lazy_gd.words_per_run,
    samples=True, online=True, scale_free=True, pads_dims=True)

LAZY_SPEC = registry.AlgorithmSpec(
    name='lazy', make=lazy,
    fields={**_MODEL, **{a: f'lazy.{a}' for a in ('lr_scale', 'momentum', 'power_iters')}, **_OPTIMIZER},
    row_fields=('linearization_gap', 'sym_dim', 'step_size', 'lambda_max', 'train_error'),
    words_per_run=linearized.lazy_words_per_run, adapt=_on_samples, samples=True, lazy=True)

LAZY_EXACT_SPEC = registry.AlgorithmSpec(
    name='lazy_exact', make=lazy_exact, fields=dict(_MODEL),
    row_fields=('linearization_gap', 'sym_dim', 'tangent_rank', 'train_error', 'feature_rank'),
    bytes_per_run=linearized.exact_bytes, memory_detail=linearized.exact_detail, adapt=_on_samples, samples=True,
    lazy=True, one_program=lambda task: task.loss != 'samples',  # the grid factorization is for tensor targets
    grid=lambda alg, widths: alg.with_grid(widths))

BUILTIN = (GD_SPEC, BEYOND_LAZY_SPEC, LAZY_SPEC, LAZY_EXACT_SPEC)
for _spec in BUILTIN:
  if registry.find(_spec.name) is None:
    registry.register(_spec)
