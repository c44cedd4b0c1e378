"""overparam: over-parameterized symmetric tensor decomposition, lazy versus beyond lazy, in JAX.

Python API (overparam/api.py; imported on first use, so `import overparam` does not import JAX):
  decompose(tensor, width, *, order=None, algorithm='beyond_lazy', **config_overrides)
  run(config, workdir)        a sweep, as launch.py runs it; returns the summary
  load_config('configs/default.py:quick')
"""

import os

# XLA's CPU LAPACK kernels (lazy_exact's QR, SVD, Cholesky, eigh) call the OpenBLAS that numpy and
# scipy load. With its default thread pool spinning against XLA's own threads on shared cores,
# lazy_exact's many small LAPACK calls ran 3x slower (configs/default.py at d = 16, 2 cores, load
# ~3.5: 24.8 s against 7.6 s). One thread unless the user chose otherwise; it must be set before
# numpy loads, which importing this package does first (launch.py imports nothing else before it).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

__all__ = ('decompose', 'run', 'load_config', 'Decomposition')


def __getattr__(name):
  if name in __all__:
    from overparam import api  # noqa: PLC0415
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(__all__))
