"""Incremental detokenization: streamed text chunks that concatenate to exactly the whole decode.

Decoding each streamed response on its own garbles text (tensorrtllm_backend issues #34, #112,
#332): a byte-level BPE token may hold part of a UTF-8 character, and decoders drop or add
spaces at chunk edges. Here every step decodes a short window `ids[prefix:]` and emits only what
`ids[prefix:read]` did not already produce; the tokens of a character that is still unfinished at
the end of the window wait until it completes (or `finish()`), while everything before them goes
out at once. Whether it ends inside a character is read
from the tokens' bytes for byte-level BPE tokenizers (Qwen2's), so a genuinely invalid byte does
not hold the stream back; otherwise from a trailing U+FFFD in the window's text.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

REPLACEMENT = "\ufffd"
MAX_CHAR_BYTES = 4  # UTF-8


class IncrementalDetokenizer:
    """Turns a growing token sequence into text deltas.

    Args:
        decode: ids -> text (e.g. `Tokenizer.decode`, special tokens skipped).
        prompt_ids: ids already "printed" (context for the first delta, never emitted).
        unfinished: ids -> True when their bytes end inside a UTF-8 character (see byte_level_unfinished);
            None: a trailing U+FFFD in the decoded text counts as unfinished.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], *, prompt_ids: Sequence[int] = (),
                 unfinished: Callable[[Sequence[int]], bool] | None = None):
        self._decode = decode
        self._unfinished = unfinished
        self.ids: list[int] = list(prompt_ids)
        # ids[prefix:read] is the window whose text has been emitted already (or is prompt context)
        self._prefix = max(0, len(self.ids) - 5)
        self._read = len(self.ids)
        self._start = len(self.ids)

    def push(self, new_ids: Iterable[int]) -> str:
        """Append tokens; return the text they complete. Complete characters go out at once; only the
        tokens of a character still unfinished at the end wait for the rest of it (or `finish()`)."""
        self.ids.extend(int(i) for i in new_ids)
        end = len(self.ids)
        # an unfinished character's lead byte is in its last 4 bytes, so in at most 4 tokens
        for _ in range(MAX_CHAR_BYTES):
            if end == self._read or not self._ends_unfinished(end):
                break
            end -= 1
        if end == self._read or self._ends_unfinished(end):
            return ""
        done = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:end])
        if len(text) > len(done):
            self._prefix, self._read = self._read, end
            return text[len(done):]
        return ""

    def _ends_unfinished(self, end: int) -> bool:
        """Whether ids[read:end] end inside a UTF-8 character."""
        if self._unfinished:
            return self._unfinished(self.ids[self._read:end])
        return self._decode(self.ids[self._prefix:end]).endswith(REPLACEMENT)

    def finish(self) -> str:
        """The text not emitted yet, incomplete characters included (as the whole decode shows them)."""
        done = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(done):]

    @property
    def generated_ids(self) -> list[int]:
        return self.ids[self._start:]


def stream_text(decode: Callable[[Sequence[int]], str], chunks: Iterable[Sequence[int]], *,
                unfinished: Callable[[Sequence[int]], bool] | None = None) -> list[str]:
    """Deltas of `chunks` of token ids, the final flush included (empty deltas dropped)."""
    detok = IncrementalDetokenizer(decode, unfinished=unfinished)
    out = [detok.push(c) for c in chunks]
    out.append(detok.finish())
    return [t for t in out if t]


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2 ByteLevel: the printable character standing for each byte in the vocabulary -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return {c: b for b, c in chars.items()}


def byte_level_unfinished(tokenizer_json: str | Path, *, skip_special: bool = True) -> Callable[[Sequence[int]], bool] | None:
    """For a ByteLevel-decoded tokenizer.json: ids -> True when their bytes end inside a UTF-8 character.

    Returns None for other tokenizers (the caller falls back to the U+FFFD test).
    """
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        return None
    alphabet = _byte_level_alphabet()
    token_bytes: dict[int, bytes] = {}
    for token, idx in spec["model"]["vocab"].items():
        token_bytes[idx] = bytes(alphabet[c] for c in token if c in alphabet)
    for added in spec.get("added_tokens", []):  # written as plain text; special ones are skipped in decode
        token_bytes[added["id"]] = b"" if added.get("special") and skip_special else added["content"].encode()

    def unfinished(ids: Sequence[int]) -> bool:
        tail = b""
        for i in reversed(ids):  # a character is at most 4 bytes: its lead byte is in the last 4
            tail = token_bytes.get(int(i), b"") + tail
            if len(tail) >= 4:
                break
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        decoder.decode(tail[-4:], final=False)
        return bool(decoder.getstate()[0])

    return unfinished
