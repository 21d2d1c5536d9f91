"""The one exception type users see.

Every expected failure (bad file, bad flag, unreachable device) raises `EdgefrError` with a single line
that names the file or flag and says what was expected; the CLI prints it without a traceback.
"""

import json
from pathlib import Path



class EdgefrError(Exception):
    """A user-facing error whose message is one line naming the offending input."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def read_json_file(path: str | Path, what: str, remedy: str) -> object:
    """Parse a JSON file; a missing, unreadable or truncated file is a one-line error naming it and the remedy."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgefrError(f"{path}: no such {what}; {remedy}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgefrError(f"{path}: corrupt or truncated {what}, not valid JSON ({exc}); {remedy}") from None
