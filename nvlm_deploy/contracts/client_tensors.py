"""THE client-facing tensors of both entry points (`ensemble`, `tensorrt_llm_bls`).

Names, types, shapes and meaning follow tensorrtllm_backend's multimodal ensemble and BLS
(all_models/multimodal/ensemble and inflight_batcher_llm/tensorrt_llm_bls config.pbtxt, read at
tensorrtllm_backend c2e65b88, the last commit holding them there; TensorRT-LLM 1.2 moved them to
triton_backend/ and declares `image_url_input` as STRING [-1]). `image_bytes_input` is decoded RGB
pixels [N, H, W, 3] per request, as upstream's; encoded files (PNG, JPEG, ...) go in our own
`image_files_input` (+ `image_files_lengths`), and earlier chat turns in our `chat_history`.
Inputs NVLM-D cannot use (`image_input`'s preprocessed pixels, video, the encoder-decoder text) are
declared, so upstream clients' requests parse, and refused with a message by preprocessing.
This table renders the `input`/`output` blocks of both entry points, preprocessing's inputs and
the ensemble's input maps, routes the inputs in the BLS, and builds the client's request tensors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientTensor:
    name: str
    triton_type: str  # model config data_type
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = True
    preprocessing: str | None = None  # the `preprocessing` input it feeds
    tensorrt_llm: str | None = None  # the `tensorrt_llm` input it feeds directly
    request_field: str | None = None  # client.tensors.ChatRequest field of a scalar input

    @property
    def wire_type(self) -> str:
        """The type name tritonclient's InferInput takes (TYPE_STRING travels as BYTES)."""
        return "BYTES" if self.triton_type == "TYPE_STRING" else self.triton_type.removeprefix("TYPE_")


TEXT_INPUT, IMAGE_FILES, IMAGE_FILES_LENGTHS = "text_input", "image_files_input", "image_files_lengths"
CHAT_HISTORY, STOP_WORDS = "chat_history", "stop_words"
CLIENT_INPUTS: tuple[ClientTensor, ...] = (
    ClientTensor(TEXT_INPUT, "TYPE_STRING", (1,), optional=False, preprocessing="QUERY"),
    ClientTensor("decoder_text_input", "TYPE_STRING", (1,), preprocessing="DECODER_QUERY"),
    ClientTensor("image_input", "TYPE_FP16", (-1, -1, -1, -1), preprocessing="IMAGE_INPUT"),
    ClientTensor("image_bytes_input", "TYPE_UINT8", (-1, -1, -1, -1), preprocessing="IMAGE_BYTES"),
    ClientTensor("image_url_input", "TYPE_STRING", (-1,), preprocessing="IMAGE_URL"),
    ClientTensor("video_bytes_input", "TYPE_UINT8", (-1, -1, -1, -1), preprocessing="VIDEO_BYTES"),
    ClientTensor(IMAGE_FILES, "TYPE_UINT8", (-1, -1), preprocessing="IMAGE_FILES"),
    ClientTensor(IMAGE_FILES_LENGTHS, "TYPE_INT32", (-1,), preprocessing="IMAGE_FILES_LENGTHS"),
    ClientTensor("max_tokens", "TYPE_INT32", (1,), optional=False, preprocessing="REQUEST_OUTPUT_LEN",
                 request_field="max_tokens"),
    ClientTensor("stream", "TYPE_BOOL", (1,), tensorrt_llm="streaming", request_field="stream"),
    ClientTensor("temperature", "TYPE_FP32", (1,), tensorrt_llm="temperature", request_field="temperature"),
    ClientTensor("top_k", "TYPE_INT32", (1,), tensorrt_llm="runtime_top_k", request_field="top_k"),
    ClientTensor("top_p", "TYPE_FP32", (1,), tensorrt_llm="runtime_top_p", request_field="top_p"),
    ClientTensor("seed", "TYPE_UINT64", (1,), tensorrt_llm="seed", request_field="seed"),
    ClientTensor("bad_words", "TYPE_STRING", (-1,), preprocessing="BAD_WORDS_DICT"),
    ClientTensor(STOP_WORDS, "TYPE_STRING", (-1,), preprocessing="STOP_WORDS_DICT"),
    ClientTensor("length_penalty", "TYPE_FP32", (1,), tensorrt_llm="len_penalty"),
    ClientTensor("repetition_penalty", "TYPE_FP32", (1,), tensorrt_llm="repetition_penalty",
                 request_field="repetition_penalty"),
    ClientTensor("min_tokens", "TYPE_INT32", (1,), tensorrt_llm="min_tokens", request_field="min_tokens"),
    ClientTensor("presence_penalty", "TYPE_FP32", (1,), tensorrt_llm="presence_penalty",
                 request_field="presence_penalty"),
    ClientTensor("frequency_penalty", "TYPE_FP32", (1,), tensorrt_llm="frequency_penalty",
                 request_field="frequency_penalty"),
    ClientTensor("return_log_probs", "TYPE_BOOL", (1,), tensorrt_llm="return_log_probs",
                 request_field="return_log_probs"),
    ClientTensor("return_context_logits", "TYPE_BOOL", (1,), tensorrt_llm="return_context_logits"),
    ClientTensor("return_generation_logits", "TYPE_BOOL", (1,), tensorrt_llm="return_generation_logits"),
    ClientTensor("beam_width", "TYPE_INT32", (1,), tensorrt_llm="beam_width"),
    ClientTensor("num_return_sequences", "TYPE_INT32", (1,), tensorrt_llm="num_return_sequences"),
    ClientTensor("prompt_table_extra_id", "TYPE_UINT64", (1,), preprocessing="PROMPT_TABLE_EXTRA_ID"),
    ClientTensor("embedding_bias_words", "TYPE_STRING", (-1,), preprocessing="EMBEDDING_BIAS_WORDS"),
    ClientTensor("embedding_bias_weights", "TYPE_FP32", (-1,), preprocessing="EMBEDDING_BIAS_WEIGHTS"),
    ClientTensor("end_id", "TYPE_INT32", (1,), preprocessing="END_ID", request_field="end_id"),
    ClientTensor("pad_id", "TYPE_INT32", (1,), preprocessing="PAD_ID", request_field="pad_id"),
    ClientTensor("exclude_input_in_output", "TYPE_BOOL", (1,), tensorrt_llm="exclude_input_in_output",
                 request_field="exclude_input_in_output"),
    # ours: the conversation before text_input, JSON [[role, content], ...] (roles system/user/assistant)
    ClientTensor(CHAT_HISTORY, "TYPE_STRING", (1,), preprocessing="CHAT_HISTORY"),
)
TEXT_OUTPUT = ClientTensor("text_output", "TYPE_STRING", (-1,), optional=False)
# prompt tokens (image tokens included) and generated tokens, on the BLS's final response (TensorRT-LLM's
# tensorrt_llm model names them num_input_tokens / num_output_tokens)
NUM_INPUT_TOKENS = ClientTensor("num_input_tokens", "TYPE_INT32", (1,), optional=False)
NUM_OUTPUT_TOKENS = ClientTensor("num_output_tokens", "TYPE_INT32", (1,), optional=False)
# which row of a batched request a response answers (tensorrtllm_backend's names; sequence_index is
# the returned sequence within the row: always 0, one sequence per row)
BATCH_INDEX = ClientTensor("batch_index", "TYPE_INT32", (1,), optional=False)
SEQUENCE_INDEX = ClientTensor("sequence_index", "TYPE_INT32", (1,), optional=False)
# with return_log_probs (tensorrtllm_backend's shapes: per beam, and per beam x token)
CUM_LOG_PROBS = ClientTensor("cum_log_probs", "TYPE_FP32", (-1,), optional=False)
OUTPUT_LOG_PROBS = ClientTensor("output_log_probs", "TYPE_FP32", (-1, -1), optional=False)
CLIENT_OUTPUTS: tuple[ClientTensor, ...] = (TEXT_OUTPUT, CUM_LOG_PROBS, OUTPUT_LOG_PROBS)
BLS_OUTPUTS: tuple[ClientTensor, ...] = (TEXT_OUTPUT, CUM_LOG_PROBS, OUTPUT_LOG_PROBS, BATCH_INDEX, SEQUENCE_INDEX,
                                         NUM_INPUT_TOKENS, NUM_OUTPUT_TOKENS)
BY_NAME = {t.name: t for t in CLIENT_INPUTS + BLS_OUTPUTS}

# Inputs the BLS handles itself rather than passing through to tensorrt_llm.
STREAM, EXCLUDE_INPUT = "stream", "exclude_input_in_output"


def preprocessing_inputs() -> dict[str, str]:
    """client input -> preprocessing input."""
    return {t.name: t.preprocessing for t in CLIENT_INPUTS if t.preprocessing}


def passthrough_inputs() -> dict[str, str]:
    """client input -> tensorrt_llm input, for inputs that go straight to the decoder."""
    return {t.name: t.tensorrt_llm for t in CLIENT_INPUTS if t.tensorrt_llm}


def _tensor_line(t: ClientTensor, name: str | None = None) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    return (f'  {{ name: "{name or t.name}" data_type: {t.triton_type} dims: [ {dims} ]'
            f'{" optional: true" if t.optional else ""} }}')


def render_io() -> dict[str, str]:
    """Template values: the bodies of the input/output lists (`bls_outputs` add the token counts)."""
    return {"client_inputs": ",\n".join(_tensor_line(t) for t in CLIENT_INPUTS),
            "client_outputs": ",\n".join(_tensor_line(t) for t in CLIENT_OUTPUTS),
            "bls_outputs": ",\n".join(_tensor_line(t) for t in BLS_OUTPUTS),
            # preprocessing's inputs fed by the client: same type and shape under preprocessing's name
            "preprocessing_client_inputs": ",\n".join(_tensor_line(t, t.preprocessing) for t in CLIENT_INPUTS
                                                      if t.preprocessing)}


def render_ensemble_maps() -> dict[str, str]:
    """Template values: the ensemble's input maps of the client inputs into preprocessing and tensorrt_llm."""
    def maps(pairs: dict[str, str]) -> str:
        return "\n".join(f'      input_map {{ key: "{dst}" value: "{src}" }}' for src, dst in pairs.items())

    return {"preprocessing_client_maps": maps(preprocessing_inputs()),
            "tensorrt_llm_client_maps": maps(passthrough_inputs())}
