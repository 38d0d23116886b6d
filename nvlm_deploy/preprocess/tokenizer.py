"""Tokenizer: HF `tokenizer.json` (Qwen2 byte-level BPE) loading, and a small one built here.

Real NVLM-D checkpoints carry Qwen2.5's `tokenizer.json`; tiny checkpoints carry a byte-level BPE
trained here on a built-in corpus with the same pre-tokenizer and the Qwen2 special tokens. Code
looks special ids up by token text, never by Qwen's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from nvlm_deploy.errors import DeployError

# Qwen2.5 special tokens, in Qwen's order (they take the ids after the BPE vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
IMAGE_PAD = "<|vision_pad|>"  # NVLM-D's image context token
# What happens to control tokens (any added token: <|im_end|>, <|vision_pad|>, ...) written in a request's text:
# "escape" tokenizes them as the plain text they are; "refuse" rejects the request. Never obeyed.
SPECIAL_TOKEN_POLICIES = ("escape", "refuse")
DEFAULT_SPECIAL_TOKEN_POLICY = "escape"
# Text HF's template writes around image pads (plain text there, so plain text here); "refuse" refuses it too.
RESERVED_TEXT = r"</?Image>|<tile_(?:\d+|global_thumbnail)>"
EOS = "<|im_end|>"
PAD = "<|endoftext|>"
# Qwen2's pre-tokenizer split (public tokenizer.json of Qwen2/Qwen2.5)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """\
Answer the questions. You are a helpful assistant. Describe the image in detail.
What is in the picture? What color is the shape? What shape is it? How many shapes are there?
Which side is the red shape on? The shape is on the left. The shape is on the right. In the middle.
There is one circle. There are two squares. There are three triangles, four stars and five dots.
red green blue yellow orange purple white black gray pink brown cyan magenta
circle square triangle star cross ring dot line rectangle diamond heart
left right top bottom center middle above below near far big small large tiny
one two three four five six seven eight nine ten zero
0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
Image tile global thumbnail <Image> </Image> <tile_1> <tile_2> <tile_3> <tile_global_thumbnail>
Hello, world! How are you today? I am fine, thank you. Yes. No. Maybe. Please.
Tensor parallel engines serve the model on many GPUs with a prompt table for image features.
Les chats sont mignons. Über alles. Café crème. 日本語のテキスト。 中文文本。 Emoji: 🙂 🚀 ✓
Which side has the striped square? The striped square is on the left, in the middle or on the right.
system
user
assistant
red
green
blue
yellow
purple
orange
circle
square
triangle
cross
one
two
three
four
left
middle
right
"""


def write_tokenizer(out_dir: str | Path, *, vocab_size: int = 1024) -> None:
    """Train the small byte-level BPE on CORPUS and write `tokenizer.json` + `tokenizer_config.json`.

    Args:
        out_dir: existing directory.
        vocab_size: total size, special tokens included.
    """
    from tokenizers import Regex, Tokenizer as HfTokenizer, decoders, models, pre_tokenizers, trainers

    tok = HfTokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines() * 4, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    out = Path(out_dir)
    tok.save(str(out / "tokenizer.json"))
    added = {str(tok.token_to_id(t)): {"content": t, "special": True} for t in SPECIAL_TOKENS}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 32768,
    }, indent=2))


class Tokenizer:
    """Thin wrapper over `tokenizers.Tokenizer` with the ids NVLM-D needs."""

    def __init__(self, hf_tokenizer, *, eos_token: str = EOS, pad_token: str = PAD):
        self._tok = hf_tokenizer
        self.eos_id = self.token_id(eos_token)
        self.pad_id = self.token_id(pad_token)
        self.image_pad_id = self.token_id(IMAGE_PAD)
        added = hf_tokenizer.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.control_ids = frozenset(added)  # every added token, special or not: never from request text

    @classmethod
    def load(cls, model_dir: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HfTokenizer

        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise DeployError(f"{path} does not exist: the checkpoint needs its tokenizer.json "
                              "(NVLM-D uses Qwen2.5-72B-Instruct's tokenizer).")
        try:
            tok = HfTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on parse errors
            raise DeployError(f"{path} is not a valid tokenizer.json ({exc}).") from None
        eos = EOS
        config = Path(model_dir) / "tokenizer_config.json"
        if config.is_file():
            eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token") or EOS
            eos = eos["content"] if isinstance(eos, dict) else eos
        return cls(tok, eos_token=eos)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def longest_token_bytes(self) -> int:
        """UTF-8 bytes of the vocabulary's longest token string (byte-level tokens count 1-2 bytes per
        byte they stand for: an upper bound on the text one token covers)."""
        return max(len(token.encode("utf-8")) for token in self._tok.get_vocab(with_added_tokens=True))

    def token_id(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise DeployError(f"the tokenizer has no token {token!r}; NVLM-D needs the Qwen2.5 special tokens.")
        return idx

    def encode(self, text: str) -> list[int]:
        """Token ids; special tokens written in the text (<|im_start|> ...) map to their ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` as plain text: written control tokens become the BPE pieces of their characters.

        The pipeline `encode` runs on the text between added tokens (normalizer, pre-tokenizer, BPE model),
        so text without control tokens gets exactly `encode`'s ids.
        """
        tok = self._tok
        if tok.normalizer is not None:
            text = tok.normalizer.normalize_str(text)
        pieces = tok.pre_tokenizer.pre_tokenize_str(text) if tok.pre_tokenizer is not None else [(text, None)]
        return [token.id for piece, _ in pieces for token in tok.model.tokenize(piece)]

    def encode_segments(self, segments, *, policy: str = DEFAULT_SPECIAL_TOKEN_POLICY) -> list[int]:
        """Ids of a prompt given as `prompt.Segment`s: control segments as control tokens, text as text.

        Text next to text is encoded together (HF encodes the text between control tokens as one piece,
        so a prompt without control tokens in its text gets exactly `encode(full text)`).

        Args:
            segments: (text, control, source) in order.
            policy: what control tokens (and RESERVED_TEXT, for "refuse") in text do: SPECIAL_TOKEN_POLICIES.
        """
        if policy not in SPECIAL_TOKEN_POLICIES:
            raise DeployError(f"special-token policy {policy!r} is not one of {list(SPECIAL_TOKEN_POLICIES)}.")
        ids: list[int] = []
        run: list = []
        for segment in [*segments, None]:
            if segment is not None and not segment.control:
                run.append(segment)
                continue
            if run:
                ids += self._encode_text(run, policy=policy)
                run = []
            if segment is not None:
                ids += self._encode_control(segment.text)
        return ids

    def _encode_text(self, run, *, policy: str) -> list[int]:
        import re

        text = "".join(segment.text for segment in run)
        ids = self.encode(text)
        forged = [i for i in ids if i in self.control_ids]
        if policy == "refuse":
            for segment in run:
                found = ([self._tok.id_to_token(i) for i in self.encode(segment.text) if i in self.control_ids]
                         + re.findall(RESERVED_TEXT, segment.text))
                if found and segment.source:
                    raise DeployError(
                        f"{segment.source} contains {found[0]!r}, which is part of the chat template, not text; "
                        "this server refuses control tokens in requests: remove it (or ask the operator to "
                        "package with --special-tokens-in-text escape, which reads it as plain text).")
        return self.encode_plain(text) if forged else ids

    def _encode_control(self, text: str) -> list[int]:
        ids = self.encode(text)
        if not ids or any(i not in self.control_ids for i in ids):
            raise ValueError(f"template segment {text[:40]!r} is not made of control tokens only")
        return ids

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
