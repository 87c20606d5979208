"""The one exception type a user should ever see: it says what is wrong and how to fix it."""


class AlolError(Exception):
    """A problem with the user's input or configuration (not a bug in alol).

    Stages print its message without a traceback and exit with status 1.
    """
