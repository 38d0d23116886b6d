"""Serving: Triton model repositories from the artifacts, tritonserver, and the models' request logic.

package (fill triton_repo/ templates), template (${var} filling that refuses leftovers), server
(find/start/stop tritonserver), launch (engine/GPU checks, mpirun leader mode), and the handlers
the Python models call: preprocessing, vision, llm, bls, detokenize, request_inputs, pbutils.
"""
