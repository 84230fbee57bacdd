"""Reading JSON that a user, a crash or another program left on disk: size-capped before reading, depth-limited
before parsing, so /dev/zero, a 1 GB file or a 5,000-deep list gives a clear error instead of a hang or a
RecursionError."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

MAX_DEPTH = 32  # a spec or a status is two levels deep; anything deeper is not ours


class JSONFileError(ValueError):
    """A file that cannot be read as the small JSON document it should be; the message names the file."""


def nesting_depth(text: str) -> int:
    """Deepest [ / { nesting outside strings, found without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(text: str, what: str = "JSON", max_depth: int = MAX_DEPTH):
    """json.loads with a depth limit and one error type."""
    if nesting_depth(text) > max_depth:
        raise JSONFileError(f"{what} is nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise JSONFileError(f"{what} is not valid JSON ({error})") from None


def read_json_file(path: Path | str, max_bytes: int, max_depth: int = MAX_DEPTH):
    """The JSON value in a regular file of at most max_bytes bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise JSONFileError(f"{path} is not a regular file")
            if info.st_size > max_bytes:
                raise JSONFileError(f"{path} is {info.st_size:,} bytes; at most {max_bytes:,} are read")
            data = f.read(max_bytes + 1)  # the file may have grown since fstat
    except IsADirectoryError:
        raise JSONFileError(f"{path} is a directory, not a JSON file") from None
    except FileNotFoundError:
        raise JSONFileError(f"{path} does not exist") from None
    except OSError as error:
        raise JSONFileError(f"{path} cannot be read ({error.strerror or error})") from None
    if len(data) > max_bytes:
        raise JSONFileError(f"{path} is over {max_bytes:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JSONFileError(f"{path} is not UTF-8 text") from None
    return parse_json(text, str(path), max_depth)
