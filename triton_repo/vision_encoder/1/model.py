"""vision_encoder: tiles -> prompt table, ONNX Runtime (cpu) or TensorRT plan (gpu) (nvlm_deploy.backend.vision).

The table leaves in the decoder's precision (this config's output data_type): the C++ backend
refuses any other. Requests batched by Triton's dynamic batcher are encoded together; the per-tile
embedding cache's counters go to the server's metrics endpoint as custom metrics
(pb_utils.MetricFamily, python_backend >= 23.05), or to the log when the backend has none.
"""

import triton_python_backend_utils as pb_utils

from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend.vision import VisionHandler
from nvlm_deploy.backend.vision_metrics import CacheMetrics
from nvlm_deploy.errors import DeployError


class TritonPythonModel:
    def initialize(self, args):
        config, params, root = pbutils.model_setup(args)
        self.handler = VisionHandler.from_parameters(root, params)
        self.table_type = next(o for o in config["output"] if o["name"] == "prompt_embedding_table")["data_type"]
        self.metrics = CacheMetrics(pb_utils, model=args.get("model_name", "vision_encoder"))
        self.metrics.update(self.handler.cache_stats())

    def execute(self, requests):
        pixels = [pb_utils.get_input_tensor_by_name(r, "pixel_values").as_numpy() for r in requests]
        responses = []
        for request, tiles, result in zip(requests, pixels, self.handler.run_many(pixels)):
            try:
                if isinstance(result, Exception):  # a request over the tile cap: its own error, the others answered
                    raise result
                table, vocab = result
                outputs = [pbutils.table_tensor(pb_utils, "prompt_embedding_table", table, self.table_type),
                           pb_utils.Tensor("prompt_vocab_size", vocab)]
                input_ids = pb_utils.get_input_tensor_by_name(request, "input_ids")
                if input_ids is not None:  # package --prompt-table-extra-ids (ensemble): ids for KV-cache reuse
                    outputs.append(pb_utils.Tensor("prompt_table_extra_ids",
                                                   self.handler.extra_ids(input_ids.as_numpy(), tiles)))
            except DeployError as exc:
                responses.append(pbutils.error_response(pb_utils, str(exc)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        self.metrics.update(self.handler.cache_stats())
        return responses

    def finalize(self):
        # drop the Metric/MetricFamily objects while the stub is alive: left to ~Stub (which drops the model
        # after its own instance pointer is gone), their destructors reach a null shared-memory pool and the
        # stub segfaults in Metric::SaveToSharedMemory at every shutdown (python_backend r24.10 src/metric.cc,
        # src/pb_stub.cc ~Stub; issue 14)
        self.metrics = None
