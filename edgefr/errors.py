"""The one exception type users see.

Every expected failure (bad file, bad flag, unreachable device) raises `EdgefrError` with a single line
that names the file or flag and says what was expected; the CLI prints it without a traceback.
"""

import json
import tomllib
from pathlib import Path



class EdgefrError(Exception):
    """A user-facing error whose message is one line naming the offending input."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _read_structured_file(path: str | Path, what: str, remedy: str, parse, syntax_error, language: str):
    path = Path(path)
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise EdgefrError(f"{path}: no such {what}; {remedy}") from None
    except (syntax_error, UnicodeDecodeError) as exc:
        raise EdgefrError(f"{path}: corrupt or truncated {what}, not valid {language} ({exc}); {remedy}") from None


def read_json_file(path: str | Path, what: str, remedy: str) -> object:
    """Parse a JSON file; a missing, unreadable or truncated file is a one-line error naming it and the remedy."""
    return _read_structured_file(path, what, remedy, json.loads, json.JSONDecodeError, "JSON")


def read_toml_file(path: str | Path, what: str, remedy: str) -> dict:
    """Parse a TOML file; a missing or malformed file is a one-line error naming it and the remedy."""
    return _read_structured_file(path, what, remedy, tomllib.loads, tomllib.TOMLDecodeError, "TOML")
