"""The one exception type for bad input: the CLI prints it as one `error:` line (exit 2).

Anything else that escapes a command is a bug, and is reported as one.
"""


class UserError(ValueError):
    """Bad input the user can fix: a path, a name, a config value. Its message says what and how."""
