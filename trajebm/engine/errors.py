"""The one exception type for bad user input: the CLIs turn it into a one-line error and exit 2."""


class UsageError(ValueError):
    """Raised for input a user can fix (bad file, bad shape, bad option); not for bugs."""
