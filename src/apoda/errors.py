"""The one exception type apoda raises for bad input; the CLI prints it as a single line."""


class ApodaError(Exception):
    """Bad input or state that the user can fix: the message names the path or value at fault."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training run between two steps; the message says what was saved."""
