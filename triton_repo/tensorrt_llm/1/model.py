"""tensorrt_llm (CPU runtime): tensorrtllm_backend's tensors over nvlm_deploy.runtime (nvlm_deploy.backend.llm).

Decoupled (the default): streamed tokens go out as they are generated. Packaged with
`--decoupled-mode false`, each request gets one response returned from `execute` and streaming is
refused. Requests that arrive together run together either way.
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
        self.decoupled = pbutils.is_decoupled(config)

    def execute(self, requests):
        replies = [request.get_response_sender() if self.decoupled else pbutils.CollectedResponses()
                   for request in requests]
        self._execute(requests, replies)
        return None if self.decoupled else [reply.single(pb_utils) for reply in replies]

    def _execute(self, requests, replies):
        batch, senders = [], []
        for request, sender in zip(requests, replies):
            try:
                parsed = self.handler.parse(pbutils.request_inputs(pb_utils, request, self.names))
                if parsed.streaming and not self.decoupled:
                    raise RequestError("streaming needs a decoupled repository; this one was packaged with "
                                       "--decoupled-mode false: send stream=false, or re-package.")
                batch.append(parsed)
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
                return
            for sender in senders:
                sender.send(flags=FINAL)
