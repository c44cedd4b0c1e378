"""Errors that are the user's to fix. The launcher prints exactly these as one `error: ...` line
(exit 2); any other exception is a bug and propagates with its traceback."""


class UserError(ValueError):
  """Base of every error caused by the user's input; the message names the field, file or flag."""


class ConfigError(UserError):
  """A config field or function argument out of range; the message names it and the accepted range."""


class ArgumentError(ConfigError):
  """An argument of a library function (an algorithm's hyperparameter, fit's width, ...) out of range.

  `argument` is its name and `requirement` what is accepted, so that the config layer can say the same
  thing about the config field the argument came from (`renamed`).
  """

  def __init__(self, argument: str, requirement: str, value):
    self.argument, self.requirement, self.value = argument, requirement, value
    super().__init__(f'{argument} must be {requirement}, got {value!r}')

  def renamed(self, name: str) -> ConfigError:
    """The same error about `name` (e.g. 'config.beyond_lazy.lr') instead of the argument."""
    return ConfigError(f'{name} must be {self.requirement}, got {self.value!r}')


class TargetError(UserError):
  """A target file (config.target.path) or target definition that cannot be used."""


class WorkdirError(UserError):
  """The workdir cannot be used; the message names --workdir."""
