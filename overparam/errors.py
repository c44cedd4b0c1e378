"""Errors that are the user's to fix. The launcher prints exactly these as one `error: ...` line
(exit 2); any other exception is a bug and propagates with its traceback."""


class UserError(ValueError):
  """Base of every error caused by the user's input; the message names the field, file or flag."""


class ConfigError(UserError):
  """A config field out of range; the message names the field and the accepted range."""


class TargetError(UserError):
  """A target file (config.target.path) or target definition that cannot be used."""


class WorkdirError(UserError):
  """The workdir cannot be used; the message names --workdir."""
