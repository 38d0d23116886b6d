"""vision_encoder: tiles -> prompt table, ONNX Runtime (cpu) or TensorRT plan (gpu) (nvlm_deploy.backend.vision).

The table leaves in the decoder's precision (this config's output data_type): the C++ backend
refuses any other.
"""

import triton_python_backend_utils as pb_utils

from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend.vision import VisionHandler
from nvlm_deploy.errors import DeployError


class TritonPythonModel:
    def initialize(self, args):
        config, params, root = pbutils.model_setup(args)
        self.handler = VisionHandler.from_parameters(root, params)
        self.table_type = next(o for o in config["output"] if o["name"] == "prompt_embedding_table")["data_type"]

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        pixels = pb_utils.get_input_tensor_by_name(request, "pixel_values").as_numpy()
        try:
            table, vocab = self.handler.run(pixels)
        except DeployError as exc:  # a request over the limits or the engine's profile: its own error
            return pbutils.error_response(pb_utils, str(exc))
        return pb_utils.InferenceResponse(output_tensors=[
            pbutils.table_tensor(pb_utils, "prompt_embedding_table", table, self.table_type),
            pb_utils.Tensor("prompt_vocab_size", vocab)])
