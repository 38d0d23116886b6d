"""tensorrt_llm_bls: the main entry point (nvlm_deploy.backend.bls).

Calls preprocessing, vision_encoder only when the request has images, tensorrt_llm (decoupled),
and detokenizes incrementally so streamed chunks concatenate to exactly the whole text. Each
request runs in its own thread, so concurrent requests reach tensorrt_llm together and batch.
"""

import threading

import numpy as np

import triton_python_backend_utils as pb_utils

from nvlm_deploy.preprocess.tokenizer import Tokenizer
from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend import request_inputs as rq
from nvlm_deploy.contracts.client_tensors import (BATCH_INDEX, CUM_LOG_PROBS, NUM_INPUT_TOKENS, NUM_OUTPUT_TOKENS,
                                                  OUTPUT_LOG_PROBS, SEQUENCE_INDEX, TEXT_OUTPUT)
from nvlm_deploy.backend.bls import BlsHandler, make_decode, split_rows
from nvlm_deploy.backend.detokenize import byte_level_unfinished
from nvlm_deploy.backend.request_inputs import RequestError

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
PRE_OUTPUTS = ["INPUT_ID", "REQUEST_INPUT_LEN", "REQUEST_OUTPUT_LEN", "PIXEL_VALUES", "OUT_END_ID", "OUT_PAD_ID",
               "STOP_WORDS_IDS", "BAD_WORDS_IDS"]
LLM_OUTPUTS = ["output_ids", "output_log_probs", "cum_log_probs"]


class TritonPythonModel:
    def initialize(self, args):
        config, params, root = pbutils.model_setup(args)
        self.names = pbutils.input_names(config)
        self.models = {k: params[f"{k}_model"] for k in ("preprocessing", "vision_encoder", "tensorrt_llm")}
        assets = root / params["assets_dir"]
        self.handler = BlsHandler(make_decode(Tokenizer.load(assets)), preprocess=self._preprocess, encode=self._encode,
                                  generate=self._generate, unfinished=byte_level_unfinished(assets / "tokenizer.json"))
        # package --decoupled-mode: this model and tensorrt_llm are packaged alike
        self.decoupled = pbutils.is_decoupled(config)

    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                threading.Thread(target=self._serve, args=(request, request.get_response_sender()), daemon=True).start()
            return None
        replies = [pbutils.CollectedResponses() for _ in requests]
        threads = [threading.Thread(target=self._serve, args=(r, reply)) for r, reply in zip(requests, replies)]
        for thread in threads:  # concurrently, so that the requests reach tensorrt_llm together
            thread.start()
        for thread in threads:
            thread.join()
        return [reply.single(pb_utils) for reply in replies]

    def _serve(self, request, sender):
        """One request; a batch of B rows is B answers (each response says its batch_index), the last
        response of the last row to finish carries the final flag."""
        try:
            inputs = pbutils.request_inputs(pb_utils, request, self.names)
            if not self.decoupled and rq.first(inputs.get("stream"), False):
                raise RequestError("streaming needs a decoupled repository; this one was packaged with "
                                   "--decoupled-mode false: send stream=false, or re-package.")
            rows = split_rows(inputs)
        except RequestError as exc:
            sender.send(pbutils.error_response(pb_utils, str(exc)), flags=FINAL)
            return
        lock, remaining = threading.Lock(), [len(rows)]

        def finish_row(response):
            with lock:
                remaining[0] -= 1
                sender.send(response, flags=FINAL if remaining[0] == 0 else 0)

        def serve_row(b, inputs):
            def send(text, usage):
                outputs = [pb_utils.Tensor(TEXT_OUTPUT.name, pbutils.text_tensor(text)),
                           pb_utils.Tensor(BATCH_INDEX.name, np.array([b], np.int32)),
                           pb_utils.Tensor(SEQUENCE_INDEX.name, np.array([0], np.int32))]
                if usage is None:
                    with lock:
                        sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
                    return
                outputs += [pb_utils.Tensor(NUM_INPUT_TOKENS.name, np.array([usage.num_input_tokens], np.int32)),
                            pb_utils.Tensor(NUM_OUTPUT_TOKENS.name, np.array([usage.num_output_tokens], np.int32)),
                            pb_utils.Tensor(CUM_LOG_PROBS.name, np.array([usage.cum_log_prob], np.float32)),
                            pb_utils.Tensor(OUTPUT_LOG_PROBS.name,
                                            np.array([usage.output_log_probs], np.float32).reshape(1, -1))]
                finish_row(pb_utils.InferenceResponse(output_tensors=outputs))

            try:
                self.handler.run(inputs, send)
            except RequestError as exc:
                finish_row(pbutils.error_response(pb_utils, str(exc)))
            except Exception as exc:  # a bug must fail this row with its message, never hang the stream
                finish_row(pbutils.error_response(pb_utils, f"internal error: {type(exc).__name__}: {exc}"))

        threads = [threading.Thread(target=serve_row, args=(b, row), daemon=True) for b, row in enumerate(rows[1:], 1)]
        for thread in threads:
            thread.start()
        serve_row(0, rows[0])
        for thread in threads:
            thread.join()

    def _request(self, model, inputs, outputs):
        return pb_utils.InferenceRequest(model_name=self.models[model], requested_output_names=outputs,
                                         inputs=pbutils.tensors(pb_utils, inputs))

    def _preprocess(self, inputs):
        response = self._request("preprocessing", inputs, PRE_OUTPUTS).exec()
        if response.has_error():
            raise RequestError(response.error().message())
        return pbutils.response_inputs(pb_utils, response, PRE_OUTPUTS)

    def _encode(self, pixel_values):
        response = self._request("vision_encoder", {"pixel_values": pixel_values},
                                 ["prompt_embedding_table", "prompt_vocab_size"]).exec()
        if response.has_error():
            raise RequestError(response.error().message())
        # the table stays a pb_utils.Tensor: a bf16 table has no numpy view
        return (pb_utils.get_output_tensor_by_name(response, "prompt_embedding_table"),
                pb_utils.get_output_tensor_by_name(response, "prompt_vocab_size").as_numpy())

    def _generate(self, inputs):
        request = self._request("tensorrt_llm", inputs, LLM_OUTPUTS)
        for response in (request.exec(decoupled=True) if self.decoupled else [request.exec()]):
            if response.has_error():
                raise RequestError(response.error().message())
            outputs = pbutils.response_inputs(pb_utils, response, LLM_OUTPUTS)
            if outputs["output_ids"] is not None:
                yield outputs
