"""The one exception type users see.

Every expected failure (bad file, bad flag, unreachable device) raises `EdgefrError` with a single line
that names the file or flag and says what was expected; the CLI prints it without a traceback.
"""


class EdgefrError(Exception):
    """A user-facing error whose message is one line naming the offending input."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
