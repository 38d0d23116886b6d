"""postprocessing: output ids -> text, each response decoded alone (as tensorrtllm_backend's).

Streamed text decoded per response can split multi-byte characters; tensorrt_llm_bls streams exact text.
An echoed prompt (exclude_input_in_output false) comes back as the user's text, as upstream's clients
expect, not as the chat template the model saw (nvlm_deploy.backend.echo).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend import request_inputs as rq
from nvlm_deploy.backend.bls import make_decode
from nvlm_deploy.backend.echo import split_echo
from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.preprocess.tokenizer import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        _, params, root = pbutils.model_setup(args)
        assets = root / params["assets_dir"]
        self.tokenizer = Tokenizer.load(assets)
        self.decode = make_decode(self.tokenizer)
        # ids the decoder can return: its vocabulary, and in an echoed prompt the image slots after it (one per
        # prompt-table row a request may bring); anything else is a bad request, not silently dropped text
        self.id_limit = NvlmConfig.from_hf(assets).llm.vocab_size + rq.repository_limits(root).prompt_table_rows_per_request

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        """One request's response; its bad input is its own error, never its batch's."""
        try:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [1, beam, n]
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [1, beam]
            if tokens.size and (tokens.min() < 0 or tokens.max() >= self.id_limit):
                return pbutils.error_response(pb_utils, f"TOKENS_BATCH has token ids outside [0, {self.id_limit}) "
                                                        "(the vocabulary and the image slots): send the decoder's "
                                                        "output_ids.")
            texts = [self._text(row[:n].tolist()).encode("utf-8") for row, n in zip(tokens[0], lengths[0])]
        except Exception as exc:
            return pbutils.error_response(pb_utils, f"bad request: {type(exc).__name__}: {exc}")
        out = pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object))  # [beam]: 1-D, as upstream's
        return pb_utils.InferenceResponse(output_tensors=[out])

    def _text(self, ids):
        echoed = split_echo(ids, self.tokenizer, self.decode)
        if echoed is None:
            return self.decode(ids)
        user_text, answer = echoed
        return user_text + self.decode(answer)
