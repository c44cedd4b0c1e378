"""overparam: over-parameterized symmetric tensor decomposition, lazy versus beyond lazy, in JAX.

The functional core (pure functions; they compose with jax.jit and jax.vmap):
  gd(...), beyond_lazy(...), lazy(...), lazy_exact(...)   algorithm values (hyperparameters as leaves)
  fit(algorithm, key, target, *, width, steps, eps)      one run -> FitResult
  CPTensor(coeffs, factors, order)                       a CP target (the implicit loss)
  init_params, cp_form, dense, loss, rel_error           the model and loss, for your own loops
Built on it:
  decompose(tensor, width, ...) -> Decomposition          one tensor, in memory
  decompose_many(tensors, width, ...) -> [Decomposition]  a batch of same-shape tensors, one program
  run(config, workdir), load_config(spec)                 a sweep into a workdir, as launch.py runs it
"""

import os

# XLA's CPU LAPACK kernels (lazy_exact's QR, SVD, Cholesky, eigh) call the OpenBLAS that numpy and
# scipy load. With its default thread pool spinning against XLA's own threads on shared cores,
# lazy_exact's many small LAPACK calls ran 3x slower (configs/default.py at d = 16, 2 cores, load
# ~3.5: 24.8 s against 7.6 s). One thread unless the user chose otherwise; it must be set before
# numpy loads, which importing this package does first (launch.py imports nothing else before it).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from overparam.algorithms import beyond_lazy, gd, lazy, lazy_exact  # noqa: E402
from overparam.core import STATUS_NAMES  # noqa: E402
from overparam.decomposition import Decomposition, decompose, decompose_many  # noqa: E402
from overparam.fitting import FitResult, fit  # noqa: E402
from overparam.model import cp_form, dense, init_params, loss, rel_error  # noqa: E402
from overparam.tensors import CPTensor  # noqa: E402

__all__ = ('gd', 'beyond_lazy', 'lazy', 'lazy_exact', 'fit', 'FitResult', 'CPTensor', 'STATUS_NAMES',
           'init_params', 'cp_form', 'dense', 'loss', 'rel_error', 'decompose', 'decompose_many', 'Decomposition',
           'run', 'load_config')

_API = ('run', 'load_config')


def __getattr__(name):
  if name in _API:  # the workdir engine (matplotlib, ml_collections) loads on first use
    from overparam import api  # noqa: PLC0415 - lazy for import time, not to dodge a cycle
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(__all__))
