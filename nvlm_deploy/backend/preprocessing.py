"""The `preprocessing` model's work: prompt + image bytes -> ids with image slots, tiles, ids to stop at."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nvlm_deploy.errors import DeployError
from nvlm_deploy.backend import request_inputs as rq
from nvlm_deploy.backend.request_inputs import RequestError
from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.contracts.precision import from_triton

MAX_IMAGE_FILE_BYTES = 32 << 20  # a fetched image larger than this is refused


class PreprocessingHandler:
    """One request at a time: validate, tile, tokenize, put image slots; never raises for bad input
    anything but RequestError (whose message goes to the client).

    Args:
        assets_dir: the repository's tokenizer + config.json copy.
        limits: the repository's limits.
        pixel_dtype: Triton data type of PIXEL_VALUES (a precision NumPy has).
        allow_remote_urls: fetch http(s) image URLs (package --allow-image-urls); data: URLs always work.
        exif_transpose: turn images as their EXIF orientation says (package --exif-rotate; HF does not).
        special_tokens_in_text: "escape" or "refuse" control tokens written in the request's text
            (package --special-tokens-in-text; preprocess.tokenizer.SPECIAL_TOKEN_POLICIES).
    """

    def __init__(self, assets_dir: str | Path, *, limits: DeploymentLimits, pixel_dtype: str = "TYPE_FP32",
                 allow_remote_urls: bool = False, exif_transpose: bool = False,
                 special_tokens_in_text: str | None = None):
        from nvlm_deploy.preprocess.request import Preprocessor

        self.limits = limits
        self.preprocessor = Preprocessor.from_model_dir(assets_dir, max_tiles=limits.max_tiles_before_thumbnail,
                                                        max_images=limits.max_images, exif_transpose=exif_transpose,
                                                        special_tokens_in_text=special_tokens_in_text)
        self.tokenizer = self.preprocessor.tokenizer
        self.max_prompt_bytes = limits.max_prompt_bytes(self.tokenizer.longest_token_bytes())
        self.pixel_dtype = from_triton(pixel_dtype).numpy_dtype()
        self.allow_remote_urls = allow_remote_urls

    @classmethod
    def from_parameters(cls, root: Path, params: Mapping[str, str]) -> "PreprocessingHandler":
        return cls(root / params["assets_dir"], limits=rq.repository_limits(root),
                   pixel_dtype=params["pixel_values_data_type"],
                   allow_remote_urls=params.get("allow_remote_image_urls") == "true",
                   exif_transpose=params.get("exif_transpose") == "true",
                   special_tokens_in_text=params.get("special_tokens_in_text") or None)

    def run(self, inputs: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """Triton tensors in (the client-fed ones of contracts.client_tensors),
        tensors out, each with batch dimension 1."""
        prompt = rq.text(inputs.get("QUERY"), name="text_input", max_bytes=self.max_prompt_bytes)
        rq.refuse_unsupported(inputs)
        # images in order: encoded files, then decoded pixels, then URLs
        images = [*rq.image_files(inputs.get("IMAGE_FILES"), inputs.get("IMAGE_FILES_LENGTHS")),
                  *rq.pixel_images(inputs.get("IMAGE_BYTES")),
                  *rq.url_images(inputs.get("IMAGE_URL"), allow_remote=self.allow_remote_urls,
                                 max_bytes=MAX_IMAGE_FILE_BYTES)]
        out_len = rq.max_tokens(rq.first(inputs.get("REQUEST_OUTPUT_LEN")), self.limits)
        end_id = rq.first(inputs.get("END_ID"), self.tokenizer.eos_id)
        pad_id = rq.first(inputs.get("PAD_ID"), self.tokenizer.pad_id)
        history = rq.chat_history(inputs.get("CHAT_HISTORY"))
        prepared = self.prepare(prompt, images, history=history)
        ids = np.asarray(prepared.input_ids, dtype=np.int32)[None]  # [1, L]
        return {
            "STOP_WORDS_IDS": self.word_list(inputs.get("STOP_WORDS_DICT"), name="stop_words"),
            "BAD_WORDS_IDS": self.word_list(inputs.get("BAD_WORDS_DICT"), name="bad_words"),
            "INPUT_ID": ids,
            "REQUEST_INPUT_LEN": np.array([[ids.shape[1]]], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.array([[out_len]], dtype=np.int32),
            # [1, T, 3, S, S]; already float32 (the compute precision): no copy unless the repository asks another
            "PIXEL_VALUES": np.asarray(prepared.pixel_values, dtype=self.pixel_dtype)[None],
            "OUT_END_ID": np.array([[int(end_id)]], dtype=np.int32),
            "OUT_PAD_ID": np.array([[int(pad_id)]], dtype=np.int32),
        }

    def word_list(self, array, *, name: str) -> np.ndarray:
        """`stop_words` / `bad_words` strings -> tensorrtllm_backend's word list INT32 [1, 2, L]: row 0 every
        word's ids joined, row 1 each word's end offset, padded with -1 (as upstream's preprocessing)."""
        words = [] if array is None else [w.decode("utf-8") if isinstance(w, bytes) else str(w)
                                          for w in np.asarray(array).reshape(-1)]
        ids, ends = [], []
        for word in words:
            if word:
                ids += self.tokenizer.encode(word)
                ends.append(len(ids))
        if not ids:
            return np.array([[[0], [-1]]], dtype=np.int32)  # no words: one padded column
        return np.array([[ids, ends + [-1] * (len(ids) - len(ends))]], dtype=np.int32)

    def prepare(self, prompt: str, images: Sequence[bytes], *, history: Sequence[tuple[str, str]] = ()):
        """Preprocessor.prepare with the repository's limits; user mistakes become RequestError."""
        if len(images) > self.limits.max_images:
            raise RequestError(f"the request has {len(images)} images, more than this repository's limit of "
                               f"{self.limits.max_images}; send fewer images or re-package with a larger --max-images.")
        try:
            prepared = self.preprocessor.prepare(prompt, images, history=history)
        except RequestError:
            raise
        except DeployError as exc:  # corrupt image, empty prompt, too many pixels: the user's input
            raise RequestError(str(exc)) from None
        rq.check_prompt(len(prepared.input_ids), prepared.num_image_tokens, self.limits)
        return prepared
