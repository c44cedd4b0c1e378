"""Errors that are the user's to fix: the launcher prints them as one `error: ...` line."""


class ConfigError(ValueError):
  """A config field out of range; the message names the field and the accepted range."""
