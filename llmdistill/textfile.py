"""Reading the text files a user writes (prompt and data files, configs, eval sets, templates): UTF-8, with or
without the byte-order mark that Windows editors put first (Notepad's default), which is read as the text it
marks, not as a character of the first line. A byte that is not UTF-8 is named by its line. Every reader of a
user's text file goes through here (standard library only: `llmdistill validate` uses it).
"""

from __future__ import annotations

import codecs
from pathlib import Path

ENCODING = "utf-8-sig"  # UTF-8; a leading BOM (EF BB BF) is dropped, as an editor shows it


class NotUTF8(ValueError):
    """A byte that is not UTF-8 in a file read whole; `line` is its line (from 1)."""

    def __init__(self, line: int, problem: str):
        self.line = line
        super().__init__(problem)


def open_text(path):
    """A user's text file for reading line by line. Bytes that are not UTF-8 do not stop the reading: they
    come through as lone surrogates, so that `check_utf8` can name the line (and a skipping reader go on)."""
    return open(path, encoding=ENCODING, errors="surrogateescape")


def check_utf8(line: str) -> str:
    """`line` (read through `open_text`), or ValueError "not UTF-8 text (byte 0xff at character 3)"."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(line[e.start]) - 0xDC00
        raise ValueError(f"not UTF-8 text (byte 0x{byte:02x} at character {e.start + 1})") from None
    return line


def read_text(path: str | Path) -> str:
    """A user's text file, whole; NotUTF8 "not UTF-8 text (byte 0xe9: invalid continuation byte)" naming the line.
    OSError as `open` raises it."""
    data = Path(path).read_bytes()
    data = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data  # as ENCODING reads it
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUTF8(data[: e.start].count(b"\n") + 1, f"not UTF-8 text (byte 0x{data[e.start]:02x}: {e.reason})") \
            from None
