"""`tensorrt_llm_bls`: the flow an ensemble cannot express.

- Text-only requests skip `vision_encoder` (an ensemble runs every step).
- Streamed text is detokenized incrementally over the whole answer (serve.detokenize), so the
  chunks concatenate to exactly the non-streamed text, multi-byte characters included; the
  ensemble's `postprocessing` decodes each response alone, as tensorrtllm_backend's does.
- `exclude_input_in_output=false` puts the user's `text_input` in front of a non-streamed answer,
  as tensorrtllm_backend's BLS does (the text the user sent, not the chat-templated prompt); a
  streamed answer never repeats the input (upstream's BLS neither).
- The final response carries `num_input_tokens` (prompt, image tokens included) and
  `num_output_tokens`.

The model calls (`preprocess`, `encode`, `generate`) are injected: in Triton they are BLS requests
(triton_repo/tensorrt_llm_bls/1/model.py); in tests they can be the handlers themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from nvlm_deploy.backend import request_inputs as rq
from nvlm_deploy.contracts import client_tensors
from nvlm_deploy.backend.detokenize import IncrementalDetokenizer

Tensors = Mapping[str, np.ndarray | None]

# client input -> preprocessing input; client input -> tensorrt_llm input (sampling settings), except
# `stream` and `exclude_input_in_output`, which the BLS handles itself (contracts.client_tensors)
PREPROCESS_INPUTS = client_tensors.preprocessing_inputs()
SAMPLING_INPUTS = {src: dst for src, dst in client_tensors.passthrough_inputs().items()
                   if src not in (client_tensors.STREAM, client_tensors.EXCLUDE_INPUT)}


@dataclass(frozen=True)
class Usage:
    """What the final response carries besides text: token counts, and the log-probs of the generated
    tokens (zeros unless the request asked for them, as tensorrt_llm returns them)."""

    num_input_tokens: int
    num_output_tokens: int
    cum_log_prob: float = 0.0
    output_log_probs: tuple[float, ...] = ()


class BlsHandler:
    """Args:
        decode: ids -> text (special tokens skipped, ids outside the tokenizer dropped).
        preprocess: preprocessing tensors in -> out.
        encode: PIXEL_VALUES [1, T, 3, S, S] -> (prompt_embedding_table, prompt_vocab_size).
        generate: tensorrt_llm tensors in -> iterator of its outputs (output_ids, output_log_probs,
            cum_log_probs), streamed or whole.
        unfinished: ids -> True when they end inside a character (detokenize.byte_level_unfinished).
    """

    def __init__(self, decode: Callable[[list[int]], str], *, preprocess: Callable[[Tensors], Tensors],
                 encode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 generate: Callable[[Tensors], Iterable[np.ndarray]],
                 unfinished: Callable[[list[int]], bool] | None = None):
        self.decode = decode
        self.unfinished = unfinished
        self.preprocess = preprocess
        self.encode = encode
        self.generate = generate

    def run(self, inputs: Tensors, send: Callable[[str, "Usage | None"], None]) -> None:
        """Serve one request: send(text, None) per streamed chunk, then send(text, usage) once, last."""
        pre = self.preprocess({dst: inputs.get(src) for src, dst in PREPROCESS_INPUTS.items()
                               if inputs.get(src) is not None})
        streaming = bool(rq.first(inputs.get(client_tensors.STREAM), False))
        llm_inputs = {
            "input_ids": pre["INPUT_ID"], "input_lengths": pre["REQUEST_INPUT_LEN"],
            "request_output_len": pre["REQUEST_OUTPUT_LEN"], "end_id": pre["OUT_END_ID"],
            "pad_id": pre["OUT_PAD_ID"], "streaming": np.array([[streaming]], dtype=bool),
            "stop_words_list": pre["STOP_WORDS_IDS"], "bad_words_list": pre["BAD_WORDS_IDS"],
            "exclude_input_in_output": np.array([[True]], dtype=bool),
        }
        llm_inputs.update({dst: inputs[src] for src, dst in SAMPLING_INPUTS.items() if inputs.get(src) is not None})
        if np.asarray(pre["PIXEL_VALUES"]).shape[1] > 0:  # [1, T, 3, S, S]; text-only skips the encoder
            table, vocab = self.encode(pre["PIXEL_VALUES"])
            llm_inputs.update(prompt_embedding_table=table, prompt_vocab_size=vocab)
        detok = IncrementalDetokenizer(self.decode, unfinished=self.unfinished)
        echo = not streaming and not bool(rq.first(inputs.get(client_tensors.EXCLUDE_INPUT), False))
        pending = rq.text(inputs.get(client_tensors.TEXT_INPUT)) if echo else ""
        generated: list[int] = []
        log_probs: list[float] = []
        cum = 0.0
        for outputs in self.generate(llm_inputs):
            ids = np.asarray(outputs["output_ids"]).reshape(-1).tolist()
            generated += ids
            if outputs.get("output_log_probs") is not None:
                log_probs += np.asarray(outputs["output_log_probs"]).reshape(-1).tolist()[-len(ids):] if ids else []
                cum = (cum if streaming else 0.0) + float(np.asarray(outputs["cum_log_probs"]).reshape(-1)[0])
            pending += detok.push(ids)
            if streaming and pending:
                send(pending, None)
                pending = ""
        prompt_len = int(np.asarray(pre["REQUEST_INPUT_LEN"]).reshape(-1)[0])
        send(pending + detok.finish(), Usage(prompt_len, len(generated), cum, tuple(log_probs)))


def make_decode(tokenizer) -> Callable[[list[int]], str]:
    """Tokenizer.decode that drops ids it does not know (image slots, padded vocab rows)."""
    size = len(tokenizer)
    return lambda ids: tokenizer.decode([i for i in ids if 0 <= i < size])


def split_rows(inputs: Tensors) -> list[dict[str, np.ndarray]]:
    """A request with batch dimension B -> B requests of batch 1 (every present input sliced alike)."""
    present = {name: np.asarray(value) for name, value in inputs.items() if value is not None}
    sizes = {name: value.shape[0] if value.ndim else 1 for name, value in present.items()}
    batch = sizes.get(client_tensors.TEXT_INPUT, 1)
    wrong = {name: size for name, size in sizes.items() if size != batch}
    if wrong:
        raise rq.RequestError(f"text_input has batch size {batch} but {wrong} do not; give every input one row "
                              "per request of the batch.")
    return [{name: value[b:b + 1] for name, value in present.items()} for b in range(batch)]
