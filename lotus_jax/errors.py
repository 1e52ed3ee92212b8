"""The one error type the entry point turns into a one-line message (and exit code 1), and the one-line
reason recorded for a method that fails while the others go on."""


class ConfigError(ValueError):
    """Input that cannot be used as given: a bad setting, dataset, id list or checkpoint.

    The message names the bad value and says what would be valid.
    """


def failure_reason(e: BaseException) -> str:
    """One line for a failed method: the error's first line, or its last where the first only announces a
    traceback (errors raised inside a jitted step's host callback)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1 and text.endswith("Traceback (most recent call last):"):
        text = lines[-1]
    return f"{type(e).__name__}: {text}"
