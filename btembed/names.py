"""File names as text, by one rule: `path` is text (bytes that are not UTF-8 shown as U+FFFD) and, only when that
loses something, `path_bytes` holds the raw name in base64. Python carries such names as str with lone surrogates
(os.fsdecode); they cannot be written to JSON, SQLite text or a strict UTF-8 stream as they are."""
from __future__ import annotations

import base64
import os


def raw(name: str | os.PathLike | bytes) -> bytes:
    """The name's bytes as the file system has them."""
    return os.fsencode(name)


def is_text(name: str | os.PathLike | bytes) -> bool:
    """True when the name is valid UTF-8 (text loses nothing)."""
    try:
        raw(name).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def shown(name: str | os.PathLike | bytes) -> str:
    """The name as valid text: undecodable bytes become U+FFFD."""
    return raw(name).decode("utf-8", "replace")


def path_fields(name: str | os.PathLike | bytes, key: str = "path") -> dict:
    """{key: text} plus {key_bytes: base64 of the raw name} when the text is not the whole name."""
    fields = {key: shown(name)}
    if not is_text(name):
        fields[f"{key}_bytes"] = base64.b64encode(raw(name)).decode("ascii")
    return fields


def from_fields(fields: dict, key: str = "path") -> str:
    """The name back from path_fields' output (as Python carries file names)."""
    if f"{key}_bytes" in fields:
        return os.fsdecode(base64.b64decode(fields[f"{key}_bytes"]))
    return fields[key]
