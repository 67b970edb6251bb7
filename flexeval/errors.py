"""The one exception type a user can hit. The CLI prints its message without a traceback."""


class FlexEvalError(Exception):
    """A problem the user can fix: the message names the file/field and the fix."""
