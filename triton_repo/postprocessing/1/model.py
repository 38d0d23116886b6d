"""postprocessing: output ids -> text, each response decoded alone (as tensorrtllm_backend's).

Streamed text decoded per response can split multi-byte characters; tensorrt_llm_bls streams exact text.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend.bls import make_decode
from nvlm_deploy.preprocess.tokenizer import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        _, params, root = pbutils.model_setup(args)
        self.decode = make_decode(Tokenizer.load(root / params["assets_dir"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [1, beam, n]
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [1, beam]
            texts = [self.decode(row[:n].tolist()).encode("utf-8") for row, n in zip(tokens[0], lengths[0])]
            out = pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object))  # [beam]: 1-D, as upstream's
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
