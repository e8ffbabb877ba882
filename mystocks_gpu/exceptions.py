"""The root exception. Each subpackage derives its own errors from it in its ``exceptions.py``."""


class MyStocksError(Exception):
    """Root of every error this package raises on purpose (bad config, bad input, broker down...).

    The CLI turns these into a one-line message and a non-zero exit code, never a traceback.
    """

    exit_code: int = 1


class ConfigError(MyStocksError):
    """A configuration file, environment variable or option is invalid."""

    exit_code = 2
