"""THE vision encoder's I/O: tensor and file names shared by the ONNX graph, the TensorRT plan and
every runtime that runs them (DESIGN.md, "Interfaces that must not drift").

    pixel_values      [T, 3, S, S]                      -> image_embeddings [T, tokens_per_tile, llm_hidden]

T is dynamic; the dtype is the export precision.
"""

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_embeddings"
ONNX_FILE = "vision_encoder.onnx"
EXTERNAL_DATA_FILE = ONNX_FILE + ".data"
PLAN_FILE = "model.plan"
ENGINE_CONFIG_FILE = "config.json"
