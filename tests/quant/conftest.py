"""One whole-model calibration per recipe per test session, shared by the quantization tests."""

import pytest

from nvlm_deploy.quant.quantize import WHOLE_MODEL, QuantizeOptions

LAYOUTS = [(1, 1), (2, 1), (2, 2)]
RECIPES = {  # group 64 divides every rank's MLP width of the tiny model: no padding
    "fp8": QuantizeOptions(recipe="fp8", kv_cache="fp8", calib_size=3, dtype="fp32", calibration=WHOLE_MODEL),
    "int4_awq": QuantizeOptions(recipe="int4_awq", group_size=64, calib_size=3, dtype="fp32", calibration=WHOLE_MODEL),
}


@pytest.fixture(scope="session")
def whole_model_calibration(tiny_checkpoint):
    """recipe -> (calibrated reference model, CalibratedDecoder, padded intermediate), calibrated when first asked.

    Tests may only read them: write checkpoints from them, or set quantizer amaxes they then restore.
    """
    pytest.importorskip("modelopt.torch.quantization")
    from nvlm_deploy.quant.quantize import calibrate

    made = {}

    def get(name: str):
        if name not in made:
            made[name] = calibrate(tiny_checkpoint, RECIPES[name])
        return made[name]
    return get
