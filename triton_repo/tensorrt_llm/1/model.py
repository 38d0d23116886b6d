"""tensorrt_llm (CPU runtime): tensorrtllm_backend's tensors over nvlm_deploy.runtime (nvlm_deploy.backend.llm).

Decoupled: streamed tokens go out as they are generated; requests that arrive together run together.
"""

import triton_python_backend_utils as pb_utils

from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend.llm import LlmHandler
from nvlm_deploy.backend.request_inputs import RequestError

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        config, params, root = pbutils.model_setup(args)
        self.names = pbutils.input_names(config)
        self.handler = LlmHandler.from_parameters(root, params)

    def execute(self, requests):
        batch, senders = [], []
        for request in requests:
            sender = request.get_response_sender()
            try:
                batch.append(self.handler.parse(pbutils.request_inputs(pb_utils, request, self.names)))
                senders.append(sender)
            except RequestError as exc:
                sender.send(pbutils.error_response(pb_utils, str(exc)), flags=FINAL)
        if batch:
            try:
                self.handler.run(batch, lambda k, outputs: senders[k].send(pb_utils.InferenceResponse(
                    output_tensors=pbutils.tensors(pb_utils, outputs))))
            except Exception as exc:  # a failure must end these requests with its message, not hang them
                for sender in senders:
                    sender.send(pbutils.error_response(pb_utils, f"generation failed: {exc}"), flags=FINAL)
                return None
            for sender in senders:
                sender.send(flags=FINAL)
        return None
