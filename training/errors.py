"""The one exception type for mistakes in user input (paths, presets, values, files).

Library code raises it with a one-line message that names the input and the problem; the
command line prints that line and exits with status 2, without a traceback. Anything else is a
bug and keeps its traceback.
"""


class UserError(ValueError):
    """A problem with the user's input, explained in one line."""
