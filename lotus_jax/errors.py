"""The one error type the entry point turns into a one-line message (and exit code 1)."""


class ConfigError(ValueError):
    """Input that cannot be used as given: a bad setting, dataset, id list or checkpoint.

    The message names the bad value and says what would be valid.
    """
