"""preprocessing: prompt + image bytes -> ids with image slots and tiles (nvlm_deploy.backend.preprocessing).

Each request of a batch is answered on its own: one request's bad input is its own error only.
"""

import triton_python_backend_utils as pb_utils

from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend.preprocessing import PreprocessingHandler
from nvlm_deploy.backend.request_inputs import RequestError


class TritonPythonModel:
    def initialize(self, args):
        config, params, root = pbutils.model_setup(args)
        self.names = pbutils.input_names(config)
        self.handler = PreprocessingHandler.from_parameters(root, params)

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            outputs = self.handler.run(pbutils.request_inputs(pb_utils, request, self.names))
        except RequestError as exc:
            return pbutils.error_response(pb_utils, str(exc))
        except Exception as exc:  # unforeseen bad input: this request's error, never its batch's
            return pbutils.error_response(pb_utils, f"bad request: {type(exc).__name__}: {exc}")
        return pb_utils.InferenceResponse(output_tensors=pbutils.tensors(pb_utils, outputs))
