import random

import pytest

from nvlm_deploy.backend.detokenize import IncrementalDetokenizer, byte_level_unfinished, stream_text

TEXTS = ["日本語のテキスト。 中文文本。", "Café crème, Über alles 🙂 🚀 ✓", "plain ascii text", "é🙂é🙂"]


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from nvlm_deploy.preprocess.tokenizer import Tokenizer

    return Tokenizer.load(tiny_checkpoint)


def byte_tokens(tokenizer, text):
    """One byte-level token per UTF-8 byte: every multi-byte character is split across tokens."""
    return [tokenizer.token_id(BYTE_TO_CHAR[b]) for b in text.encode("utf-8")]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / Qwen2 ByteLevel map: byte -> the printable character that stands for it in the vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_TO_CHAR = _bytes_to_unicode()


@pytest.mark.parametrize("text", TEXTS)
def test_chunks_of_split_characters_concatenate_to_the_whole_decode(tokenizer, text):
    ids = byte_tokens(tokenizer, text)
    assert tokenizer.decode(ids) == text
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids) or text.isascii()
    chunks = stream_text(tokenizer.decode, [[i] for i in ids])
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)  # never a partial character


@pytest.fixture(scope="module")
def unfinished(tiny_checkpoint):
    return byte_level_unfinished(tiny_checkpoint / "tokenizer.json")


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("byte_level", [False, True])
def test_random_chunking_of_bpe_tokens_is_exact(tokenizer, unfinished, seed, byte_level):
    rng = random.Random(seed)
    ids = tokenizer.encode(rng.choice(TEXTS)) + byte_tokens(tokenizer, rng.choice(TEXTS))
    rng.shuffle(ids)  # arbitrary sequences, invalid UTF-8 included
    cuts = sorted(rng.sample(range(1, len(ids)), k=min(5, len(ids) - 1)))
    pieces = [ids[a:b] for a, b in zip([0] + cuts, cuts + [len(ids)])]
    chunks = stream_text(tokenizer.decode, pieces, unfinished=unfinished if byte_level else None)
    assert "".join(chunks) == tokenizer.decode(ids)


def test_text_is_emitted_as_soon_as_a_character_completes(tokenizer):
    ids = byte_tokens(tokenizer, "é!")  # C3 A9 21
    detok = IncrementalDetokenizer(tokenizer.decode)
    assert [detok.push([i]) for i in ids] == ["", "é", "!"]
    assert detok.finish() == ""
    assert detok.generated_ids == ids


def test_finish_flushes_an_unfinished_character_as_the_whole_decode_shows_it(tokenizer):
    ids = byte_tokens(tokenizer, "a🙂")[:-2]  # 'a' + first two bytes of a 4-byte character
    chunks = stream_text(tokenizer.decode, [[i] for i in ids])
    assert "".join(chunks) == tokenizer.decode(ids) and chunks[0] == "a"


def test_prompt_context_is_not_emitted(tokenizer):
    prompt = tokenizer.encode("Hello")
    detok = IncrementalDetokenizer(tokenizer.decode, prompt_ids=prompt)
    out = detok.push(tokenizer.encode(" world")) + detok.finish()
    assert out == " world"


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_tail_detects_split_characters(tokenizer, unfinished, text):
    ids = byte_tokens(tokenizer, text)
    ends = [len(text[:k].encode()) for k in range(len(text) + 1)]  # byte offsets of character boundaries
    assert [unfinished(ids[:n]) for n in range(1, len(ids) + 1)] == [n not in ends for n in range(1, len(ids) + 1)]


def test_invalid_bytes_do_not_hold_the_stream_back(tokenizer, unfinished):
    stray = [tokenizer.token_id(BYTE_TO_CHAR[0x97])]  # a continuation byte with no lead byte
    ids = stray + byte_tokens(tokenizer, "ok") + stray + byte_tokens(tokenizer, "fine")
    chunks = stream_text(tokenizer.decode, [[i] for i in ids], unfinished=unfinished)
    assert "".join(chunks) == tokenizer.decode(ids) and len(chunks) >= 6
    assert len(stream_text(tokenizer.decode, [[i] for i in ids])) < len(chunks)  # the U+FFFD rule waits longer


def test_other_tokenizers_fall_back(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"decoder": {"type": "Metaspace"}, "model": {"vocab": {}}}')
    assert byte_level_unfinished(tmp_path / "tokenizer.json") is None


def test_complete_characters_are_not_held_back_by_a_split_one_after_them(tokenizer, unfinished):
    from tests.serving import byte_token_ids

    ids = tokenizer.encode("ok ") + byte_token_ids(tokenizer, "日")[:2]  # "ok " then 2 of the 3 bytes of 日
    detok = IncrementalDetokenizer(tokenizer.decode, unfinished=unfinished)
    assert detok.push(ids) == "ok "  # out at once, although the chunk ends inside a character
    assert detok.push(byte_token_ids(tokenizer, "日")[2:]) == "日"
    assert detok.finish() == ""
