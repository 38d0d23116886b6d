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

from nvlm_deploy.backend.llm import check_sampling
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
                 unfinished: Callable[[list[int]], bool] | None = None,
                 extra_ids: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self.extra_ids = extra_ids  # (input_ids, pixel_values) -> prompt_table_extra_ids; GPU KV-cache reuse only
        self.decode = decode
        self.unfinished = unfinished
        self.preprocess = preprocess
        self.encode = encode
        self.generate = generate

    def run(self, inputs: Tensors, send: Callable[[str, "Usage | None"], None], *,
            ended: Callable[[], bool] | None = None) -> bool:
        """Serve one request: send(text, None) per streamed chunk, then send(text, usage) once, last.

        Args:
            ended: asked after each response of tensorrt_llm; True (the client cancelled, or the request
                ran out of time) closes the generation (the BLS then stops it in tensorrt_llm) and
                nothing more is sent.

        Returns:
            False when `ended` cut the request short (nothing final was sent), else True.
        """
        pre = self.preprocess(self._preprocessing_inputs(inputs))
        llm_inputs = self._llm_inputs(inputs, pre)
        if _has_images(pre):
            self._add_table(llm_inputs, pre, *self.encode(pre["PIXEL_VALUES"]))
        answer = _Answer(self, inputs, pre)
        responses = self.generate(llm_inputs)
        try:
            for outputs in responses:
                if not _relay(answer, outputs, send, ended):
                    return False
        finally:
            if hasattr(responses, "close"):  # a generator: its cleanup stops an unfinished generation
                responses.close()
        send(*answer.finish())
        return True

    async def run_async(self, inputs: Tensors, send: Callable[[str, "Usage | None"], None], *,
                        ended: Callable[[], bool] | None = None) -> bool:
        """`run` for an asyncio model (tensorrt_llm_bls's `async def execute`): `preprocess` and `encode`
        may return awaitables, `generate` an async iterator; everything else (and every `send`) runs on
        the caller's event loop. Same sends, same result as `run`."""
        pre = await _resolved(self.preprocess(self._preprocessing_inputs(inputs)))
        llm_inputs = self._llm_inputs(inputs, pre)
        if _has_images(pre):
            self._add_table(llm_inputs, pre, *await _resolved(self.encode(pre["PIXEL_VALUES"])))
        answer = _Answer(self, inputs, pre)
        responses = self.generate(llm_inputs)
        stream = _each(responses)
        try:
            async for outputs in stream:
                if not _relay(answer, outputs, send, ended):
                    return False
        finally:
            await stream.aclose()  # the wrapper first, on this loop; then the generation itself
            if hasattr(responses, "aclose"):  # an async generator: its cleanup stops an unfinished generation
                await responses.aclose()
            elif hasattr(responses, "close"):
                responses.close()
        send(*answer.finish())
        return True

    def _preprocessing_inputs(self, inputs: Tensors) -> dict:
        return {dst: inputs.get(src) for src, dst in PREPROCESS_INPUTS.items() if inputs.get(src) is not None}

    def _llm_inputs(self, inputs: Tensors, pre: Tensors) -> dict:
        streaming = bool(rq.first(inputs.get(client_tensors.STREAM), False))
        llm_inputs = {
            "input_ids": pre["INPUT_ID"], "input_lengths": pre["REQUEST_INPUT_LEN"],
            "request_output_len": pre["REQUEST_OUTPUT_LEN"], "end_id": pre["OUT_END_ID"],
            "pad_id": pre["OUT_PAD_ID"], "streaming": np.array([[streaming]], dtype=bool),
            "stop_words_list": pre["STOP_WORDS_IDS"], "bad_words_list": pre["BAD_WORDS_IDS"],
            "exclude_input_in_output": np.array([[True]], dtype=bool),
        }
        llm_inputs.update({dst: inputs[src] for src, dst in SAMPLING_INPUTS.items() if inputs.get(src) is not None})
        check_sampling(llm_inputs)  # refused here, not by a tensorrt_llm stream that ends at once
        return llm_inputs

    def _add_table(self, llm_inputs: dict, pre: Tensors, table, vocab) -> None:
        llm_inputs.update(prompt_embedding_table=table, prompt_vocab_size=vocab)
        if self.extra_ids is not None:  # package --prompt-table-extra-ids (GPU only)
            llm_inputs["prompt_table_extra_ids"] = self.extra_ids(pre["INPUT_ID"], pre["PIXEL_VALUES"])


def _has_images(pre: Tensors) -> bool:
    return np.asarray(pre["PIXEL_VALUES"]).shape[1] > 0  # [1, T, 3, S, S]; text-only skips the encoder


def _relay(answer: "_Answer", outputs, send, ended) -> bool:
    """One tensorrt_llm response -> the client's next chunk (if any); False when `ended` says stop first."""
    if ended is not None and ended():
        return False
    text = answer.push(outputs)
    if text:
        send(text, None)
    return True


async def _each(responses):
    """tensorrt_llm's responses as an async iterator, whether `generate` gave an async or a plain one."""
    if hasattr(responses, "__aiter__"):
        async for outputs in responses:
            yield outputs
    else:
        for outputs in responses:
            yield outputs


async def _resolved(value):
    import inspect

    return await value if inspect.isawaitable(value) else value


class _Answer:
    """One request's answer as tensorrt_llm's outputs arrive: the text to send now, then the final text
    and usage (shared by BlsHandler.run and run_async)."""

    def __init__(self, handler: BlsHandler, inputs: Tensors, pre: Tensors):
        self.streaming = bool(rq.first(inputs.get(client_tensors.STREAM), False))
        self.detok = IncrementalDetokenizer(handler.decode, unfinished=handler.unfinished)
        echo = not self.streaming and not bool(rq.first(inputs.get(client_tensors.EXCLUDE_INPUT), False))
        self.pending = rq.text(inputs.get(client_tensors.TEXT_INPUT)) if echo else ""
        self.prompt_len = int(np.asarray(pre["REQUEST_INPUT_LEN"]).reshape(-1)[0])
        self.generated: list[int] = []
        self.log_probs: list[float] = []
        self.cum = 0.0

    def push(self, outputs) -> str:
        """The text to send now ("" when nothing yet, or not streaming)."""
        ids = np.asarray(outputs["output_ids"]).reshape(-1).tolist()
        self.generated += ids
        if outputs.get("output_log_probs") is not None:
            self.log_probs += np.asarray(outputs["output_log_probs"]).reshape(-1).tolist()[-len(ids):] if ids else []
            self.cum = ((self.cum if self.streaming else 0.0)
                        + float(np.asarray(outputs["cum_log_probs"]).reshape(-1)[0]))
        self.pending += self.detok.push(ids)
        if not self.streaming:
            return ""
        text, self.pending = self.pending, ""
        return text

    def finish(self) -> tuple[str, Usage]:
        return (self.pending + self.detok.finish(),
                Usage(self.prompt_len, len(self.generated), self.cum, tuple(self.log_probs)))


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
