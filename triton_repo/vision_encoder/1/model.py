"""vision_encoder: tiles -> prompt table, ONNX Runtime (cpu) or TensorRT plan (gpu) (nvlm_deploy.serve.vision)."""

import triton_python_backend_utils as pb_utils

from nvlm_deploy.serve import pbutils
from nvlm_deploy.serve.request_inputs import RequestError
from nvlm_deploy.serve.vision import VisionHandler


class TritonPythonModel:
    def initialize(self, args):
        config, params, root = pbutils.model_setup(args)
        self.handler = VisionHandler.from_parameters(root, params)
        table = next(o for o in config["output"] if o["name"] == "prompt_embedding_table")
        self.bf16 = table["data_type"] == "TYPE_BF16"  # numpy has no bf16: hand it over through dlpack

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        pixels = pb_utils.get_input_tensor_by_name(request, "pixel_values").as_numpy()
        try:
            table, vocab = self.handler.run(pixels)
        except RequestError as exc:
            return pbutils.error_response(pb_utils, str(exc))
        if self.bf16:
            import torch

            out = pb_utils.Tensor.from_dlpack("prompt_embedding_table", torch.from_numpy(table).to(torch.bfloat16))
        else:
            out = pb_utils.Tensor("prompt_embedding_table", table)
        return pb_utils.InferenceResponse(output_tensors=[out, pb_utils.Tensor("prompt_vocab_size", vocab)])
