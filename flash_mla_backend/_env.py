"""The package's boolean environment variables, read one way.

Loaded by path from setup.py too, so it imports nothing of the package.
"""

import os

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def env_flag(name: str) -> bool:
    """True for 1/true/yes/on, False for 0/false/no/off or unset (any case, spaces ignored);
    any other value is an error that names the variable."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{name}={os.environ[name]!r} is not a boolean: use one of {', '.join(_TRUE)} or {', '.join(_FALSE[:-1])}"
    )
