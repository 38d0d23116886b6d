"""The user's text out of an echoed prompt (the ensemble's `exclude_input_in_output = false`).

tensorrtllm_backend's clients expect the echo to be the text they sent. The ensemble's
postprocessing only sees what `tensorrt_llm` returns (a step may not mix the client's tensors with a
decoupled model's outputs), i.e. the prompt as the model saw it: NVLM-D's chat template with image
placeholders. This recovers the last user turn from those ids: the text between the last
`<|im_start|>user\\n` and its `<|im_end|>`, without the `<Image>...</Image>` placeholders that
preprocessing put where the images go (prompt.image_placeholder), and splits off the answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ASSISTANT_TURN = "assistant\n"
_PLACEHOLDER = re.compile(r"<Image>.*?</Image>\n?", re.DOTALL)


def split_echo(ids: Sequence[int], tokenizer, decode: Callable[[Sequence[int]], str]) -> tuple[str, list[int]] | None:
    """(the user's last message, the answer's ids) when `ids` start with an echoed chat prompt, else None.

    Args:
        ids: one output row (prompt ids, then the generated ids).
        tokenizer: preprocess.tokenizer.Tokenizer (for the template's token ids).
        decode: ids -> text, special tokens skipped and ids outside the tokenizer dropped (bls.make_decode).
    """
    start = tokenizer.token_id(IM_START)
    assistant = tokenizer.encode(ASSISTANT_TURN)
    starts = [k for k, i in enumerate(ids) if i == start and list(ids[k + 1:k + 1 + len(assistant)]) == assistant]
    if not starts:
        return None
    answer_from = starts[-1] + 1 + len(assistant)
    prompt = tokenizer.decode([i for i in ids[:starts[-1]] if 0 <= i < len(tokenizer)], skip_special_tokens=False)
    user = prompt.rsplit(IM_START + "user\n", 1)
    if len(user) != 2:
        return None
    text = user[1].split(IM_END, 1)[0]
    return _PLACEHOLDER.sub("", text), list(ids[answer_from:])
