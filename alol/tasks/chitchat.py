"""The default pipeline's data: BYU Chit-Chat conversations, written by the download stage as a
`messages` JSONL file that the `dataset` task reads like any user's data.

The wheel's dataset.json maps a conversation id to its turns, a turn being one speaker's run of
messages (joined with a newline). Each conversation becomes one line
{"id": ..., "messages": [{"role": "user" | "assistant", "content": turn}, ...]} with the roles
alternating from the first speaker's "user". Both people are speakers, so the default's params read
it with `clean.speakers: both` (every turn after the first is a reply) and `clean.columns: {group: id}`.
"""

from __future__ import annotations

import json
from pathlib import Path

from alol.core.errors import AlolError
from alol.core.fetch import Wheel, extract

DATA = Wheel("chitchat-dataset", "0.9.0", "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e")
URL_ONLY = r"(?i)\s*((https?://|www\.)\S+\s*)+"
"""The default's clean.drop_reply_pattern: replies that are only links."""


def load_conversations(path: str | Path) -> list[tuple[str, list[str]]]:
    """(conversation id, turn texts) for every conversation, validating the file as it goes."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AlolError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); the file "
                        "is truncated or corrupt. Delete data/assets and run `dvc repro download` again.") from None
    except FileNotFoundError:
        raise AlolError(f"{path}: no such file. Run `dvc repro download` first.") from None
    if not isinstance(data, dict):
        raise AlolError(f"{path}: expected an object of conversation id -> conversation, got {type(data).__name__}.")
    conversations = []
    for conv_id, record in data.items():
        turns = record.get("messages") if isinstance(record, dict) else None
        if not turns:
            raise AlolError(f"{path}: conversation {conv_id!r} has no messages; remove it or fix its 'messages' list.")
        texts = []
        for t, turn in enumerate(turns):
            if not isinstance(turn, list) or not turn:
                raise AlolError(f"{path}: conversation {conv_id!r}, turn {t}: expected a non-empty list of messages.")
            for m, message in enumerate(turn):
                text = message.get("text") if isinstance(message, dict) else None
                if not isinstance(text, str):
                    raise AlolError(f"{path}: conversation {conv_id!r}, turn {t}, message {m}: text is "
                                    f"{'null' if text is None else type(text).__name__}, expected a string.")
            texts.append("\n".join(message["text"].strip() for message in turn).strip())
        conversations.append((conv_id, texts))
    return conversations


def write_messages(wheel: Path, dest: Path, work: Path) -> int:
    """The wheel's conversations as a messages JSONL at `dest`; returns how many."""
    raw = extract(wheel, "chitchat_dataset/dataset.json", work / "chitchat" / "dataset.json")
    conversations = load_conversations(raw)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w") as fh:
        for conv_id, turns in conversations:
            messages = [{"role": "assistant" if i % 2 else "user", "content": text} for i, text in enumerate(turns)]
            fh.write(json.dumps({"id": conv_id, "messages": messages}, ensure_ascii=False) + "\n")
    return len(conversations)
