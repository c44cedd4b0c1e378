"""overparam: over-parameterized symmetric tensor decomposition, lazy versus beyond lazy, in JAX.

Python API (overparam/api.py; imported on first use, so `import overparam` does not import JAX):
  decompose(tensor, width, *, order=None, algorithm='beyond_lazy', **config_overrides)
  run(config, workdir)        a sweep, as launch.py runs it; returns the summary
  load_config('configs/default.py:quick')
"""

__all__ = ('decompose', 'run', 'load_config', 'Decomposition')


def __getattr__(name):
  if name in __all__:
    from overparam import api  # noqa: PLC0415
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(__all__))
