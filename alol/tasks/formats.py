"""The data formats the `dataset` task reads (TRL's, plus ShareGPT), each turned into reply rows.

A reply row is one reply to train on: the chat before it (`history`, role/content messages, the
system message apart), the reply (`completion`) and, for preference data, the other reply. The
formats, detected from the columns (after `clean.columns` renamed them) in this order:

  messages             `messages`: [{role, content}, ...]; each assistant turn after a user turn
                       is a reply (or only the last: `replies: last`)
  sharegpt             `conversations`: [{from, value}, ...] (human / gpt / system ...), as messages
  preference           `chosen` + `rejected` (+ `prompt`: explicit; without it the prompt is the
                       transcripts' shared prefix, as in Anthropic's HH files)
  unpaired_preference  `prompt` + `completion` + `label` (bool)
  prompt_completion    `prompt` + `completion`

`prompt`, `completion`, `chosen` and `rejected` may also be chats (TRL's conversational form): a
list of messages, whose last assistant message is the reply.

A row the format cannot read is not an error but a counted drop (its reason, `DEFECTS`), unless
`clean.strict`; what is wrong with the whole input (a missing column, a column of the wrong type)
is an error raised before any row is read (`check_columns`).
"""

from __future__ import annotations

import re

import pyarrow as pa

from alol.core.errors import AlolError

FORMATS = ("messages", "sharegpt", "preference", "unpaired_preference", "prompt_completion")
NEEDS = {"messages": ("messages",), "sharegpt": ("conversations",), "preference": ("chosen", "rejected"),
         "unpaired_preference": ("prompt", "completion", "label"), "prompt_completion": ("prompt", "completion")}
"""The columns each format reads (preference: `prompt` too, when the data has it)."""
READ = ("prompt", "completion", "messages", "conversations", "chosen", "rejected", "label")
"""Every column a format reads (our names)."""
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant",
         "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
"""Role names as the data writes them (ShareGPT's `from` and TRL's `role`) -> ours."""
DEFECTS = {
    "empty_conversation": "a conversation with no messages",
    "unknown_role": f"a message whose role is none of {sorted(ROLES)}",
    "roles_out_of_order": "two user or two assistant messages in a row, or a system message after the first",
    "bad_message": "a message whose content is not a string",
    "no_reply": "no assistant reply after a user turn (a chat), or a null reply",
    "no_prompt": "a null or empty prompt",
    "no_label": "a null label",
    "same_pair": "a preference pair whose chosen equals its rejected",
    "no_shared_prompt": "a preference pair (implicit prompt) whose transcripts share no prefix",
}
"""Per-row defects: counted drops, errors with `clean.strict: true`."""
ASSISTANT_MARK = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def detect(columns: list[str], named: str, where: str) -> str:
    """The format: `named`, checked against the columns, or the first whose columns are all present."""
    if named != "auto":
        missing = [c for c in NEEDS[named] if c not in columns]
        if missing:
            raise AlolError(f"{where}: format {named} reads column(s) {missing}, which the data does not have; "
                            f"its columns are {columns}. Map yours in clean.columns, e.g. "
                            f"columns: {{{missing[0]}: <your column>}}.")
        return named
    for name in FORMATS:
        if all(c in columns for c in NEEDS[name]):
            return name
    raise AlolError(f"{where}: cannot tell the data's format from its columns {columns}. Looked for: "
                    + "; ".join(f"{name}: {' + '.join(NEEDS[name])}" for name in FORMATS)
                    + ". Map yours in clean.columns (e.g. columns: {prompt: question, completion: answer}) "
                    "or set clean.format.")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_chat(t: pa.DataType, keys: tuple[str, str] = ("role", "content")) -> bool:
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return False
    fields = {f.name: f.type for f in t.value_type}
    return all(k in fields and (_is_text(fields[k]) or pa.types.is_null(fields[k])) for k in keys)


def check_columns(schema: pa.Schema, fmt: str, where: str) -> None:
    """A column of the wrong type is an error, named with what it is and what the format expects."""
    expected = {"messages": ("a list of {role, content} messages", lambda t: _is_chat(t)),
                "conversations": ("a list of {from, value} messages", lambda t: _is_chat(t, ("from", "value"))),
                "label": ("true / false (bool)", pa.types.is_boolean),
                "group": ("a string or an integer", lambda t: _is_text(t) or pa.types.is_integer(t))}
    text = ("a string or a list of {role, content} messages", lambda t: _is_text(t) or _is_chat(t))
    for column in (*NEEDS[fmt], "prompt", "group"):
        if column not in schema.names:
            continue
        what, ok = expected.get(column, text)
        dtype = schema.field(column).type
        if not ok(dtype) and not pa.types.is_null(dtype):  # an all-null column: every row a counted drop
            raise AlolError(f"{where}: column {column!r} is {dtype}, expected {what} for format {fmt}. "
                            "Point clean.columns at the right column or convert it.")


def _message(m, keys: tuple[str, str]) -> tuple[str | None, str | None]:
    """(our role or None if unknown, content or None if not a string)."""
    role, content = m.get(keys[0]), m.get(keys[1])
    return ROLES.get(str(role).lower()) if role is not None else None, content if isinstance(content, str) else None


def chat(messages, keys: tuple[str, str] = ("role", "content")) -> tuple[str | None, list[dict], str | None]:
    """(system text or None, the messages with our roles, defect or None) of one stored chat."""
    if not messages:
        return None, [], "empty_conversation"
    out, system = [], None
    for i, m in enumerate(messages):
        role, content = _message(m or {}, keys)
        if role is None:
            return None, [], "unknown_role"
        if content is None:
            return None, [], "bad_message"
        if role == "system":
            if i:
                return None, [], "roles_out_of_order"
            system = content
            continue
        if out and out[-1]["role"] == role:
            return None, [], "roles_out_of_order"
        out.append({"role": role, "content": content})
    return system, out, None


def chat_replies(messages: list[dict], last_only: bool, both_speakers: bool,
                 window: int = 0) -> list[tuple[int, list[dict], str]]:
    """(turn index, history, reply) for each reply of a chat: every assistant message after a user one,
    or (both_speakers: a chat between two people) every message after the first, roles re-assigned
    going back from the reply so that the reply is the assistant's and the turn it answers the user's.
    window > 0: only the last `window` messages of each history (a long chat costs linear, not quadratic)."""
    found = []
    for t in range(1, len(messages)):
        start = max(0, t - window) if window else 0
        if both_speakers:
            history = [{"role": "user" if (t - i) % 2 else "assistant", "content": messages[i]["content"]}
                       for i in range(start, t)]
        elif messages[t]["role"] == "assistant" and messages[t - 1]["role"] == "user":
            history = messages[start:t]
        else:
            continue
        found.append((t, history, messages[t]["content"]))
    return found[-1:] if last_only else found


def reply_text(value) -> tuple[list[dict], str | None]:
    """A reply column's value: a string, or a chat whose last message is the assistant's reply (TRL's
    conversational form; the messages before it extend the prompt). (extra history, reply or None)."""
    if isinstance(value, str) or value is None:
        return [], value
    system, messages, defect = chat(value)
    if defect or not messages or messages[-1]["role"] != "assistant":
        return [], None
    return messages[:-1], messages[-1]["content"]


def prompt_chat(value) -> tuple[str | None, list[dict] | None, str | None]:
    """A prompt column's value as (system, history, defect): a string is one user message."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None, "no_prompt"
    if isinstance(value, str):
        return None, [{"role": "user", "content": value}], None
    system, messages, defect = chat(value)
    if defect:
        return None, None, defect
    if not messages:
        return None, None, "no_prompt"
    return system, messages, None


def split_transcript(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen reply, rejected reply) of two transcripts with an implicit prompt: the shared
    prefix up to and including its last '\\n\\nAssistant:' (Anthropic's HH transcripts), or, without that
    mark, the shared prefix cut back to a whitespace so that no word is split. None: nothing shared."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    shared = chosen[:n]
    mark = shared.rfind(ASSISTANT_MARK)
    if mark >= 0:
        cut = mark + len(ASSISTANT_MARK)
    elif n == len(chosen) == len(rejected):
        cut = n
    else:
        cut = max(shared.rfind(" "), shared.rfind("\n"), shared.rfind("\t")) + 1
    if cut <= 0:
        return None
    return chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip()


def transcript_chat(prompt: str) -> list[dict]:
    """An Anthropic transcript prompt ('\\n\\nHuman: ... \\n\\nAssistant: ... \\n\\nAssistant:') as messages;
    text without the marks is one user message."""
    parts = _TURN.split(prompt)
    if len(parts) < 3:
        return [{"role": "user", "content": prompt.strip()}]
    messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                for who, text in zip(parts[1::2], parts[2::2])]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the bare final "Assistant:" the reply follows
    return messages
