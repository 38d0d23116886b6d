"""tensorrt_llm (CPU runtime): tensorrtllm_backend's tensors over nvlm_deploy.runtime (nvlm_deploy.backend.llm).

In-flight batching (nvlm_deploy.backend.llm_scheduler): execute() parses its requests, hands them to
the model's one scheduler thread and returns; requests join the running batch between decoding
steps. Decoupled (the default): streamed tokens go out as they are generated; a cancelled request
stops within one step; a request past `request_timeout_s` ends with an error; a `stop` request
(tensorrtllm_backend's: `stop` true with the request_id of the one to end) ends another. Packaged
with `--decoupled-mode false`, execute() waits for its requests and returns one response each, and
streaming is refused. `gpt_model_type` V1 keeps static batching (execute waits for its batch).
"""

import threading

import triton_python_backend_utils as pb_utils

from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend import request_inputs as rq
from nvlm_deploy.backend.llm import LlmHandler
from nvlm_deploy.backend.llm_scheduler import is_static, model_scheduler
from nvlm_deploy.backend.request_inputs import RequestError


class TritonPythonModel:
    def initialize(self, args):
        config, params, root = pbutils.model_setup(args)
        self.names = [name for name in pbutils.input_names(config) if name != "stop"]
        self.handler = LlmHandler.from_parameters(root, params)
        self.decoupled = pbutils.is_decoupled(config)
        self.static = is_static(params["gpt_model_type"])
        self.static_batch = threading.Lock()
        self.scheduler = model_scheduler(self.handler, pb_utils, max_batch_size=config.get("max_batch_size"),
                                         params=params)

    def execute(self, requests):
        if self.static and self.decoupled:
            with self.static_batch:  # the Python backend may run a decoupled model's executes concurrently
                return self._execute(requests)
        return self._execute(requests)

    def _execute(self, requests):
        replies = []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else pbutils.CollectedResponses()
            # not decoupled, execute is still running: the request itself says whether it was cancelled
            reply = pbutils.Reply(pb_utils, sender, cancelled=None if self.decoupled else request.is_cancelled)
            replies.append(reply)
            self._submit(request, reply)
        if self.decoupled and not self.static:
            return None
        for reply in replies:
            reply.done.wait()
        return None if self.decoupled else [reply.sender.single(pb_utils) for reply in replies]

    def _submit(self, request, reply):
        """Parse one request (inputs copied: the scheduler reads them after execute returns) and queue it;
        its bad input is its own error, never its batch's."""
        try:
            stop = pbutils.request_inputs(pb_utils, request, ["stop"]).get("stop")
            if stop is not None and rq.first(stop, False):
                self._stop(request, reply)
                return
            parsed = self.handler.parse(pbutils.request_inputs(pb_utils, request, self.names, copy=True))
            if parsed.streaming and not self.decoupled:
                raise RequestError("streaming needs a decoupled repository; this one was packaged with "
                                   "--decoupled-mode false: send stream=false, or re-package.")
        except RequestError as exc:
            reply.fail(str(exc))
            return
        except Exception as exc:  # a malformed tensor the checks did not foresee: still only this request's error
            reply.fail(f"bad request: {type(exc).__name__}: {exc}")
            return
        self.scheduler.submit(parsed, reply, request_id=request.request_id())

    def _stop(self, request, reply):
        """tensorrtllm_backend's stop request: an empty final response; the named request ends at the next step."""
        if not request.request_id():
            raise RequestError("a stop request needs the request_id of the request to stop.")
        self.scheduler.stop(request.request_id())
        reply.finish(pb_utils.InferenceResponse(output_tensors=[]))

    def finalize(self):
        self.scheduler.close()
