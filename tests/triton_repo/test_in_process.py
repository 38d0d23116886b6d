"""Every Python model of triton_repo/ is covered here, and what the tests load is what Triton loads."""

import sys
from pathlib import Path

from nvlm_deploy.resources import templates_dir
from tests.triton_repo.in_process import PB_MODULE, PYTHON_MODELS, import_model, model_source


def test_every_python_model_has_an_in_process_test_file():
    with_model_py = {p.parent.parent.name for p in templates_dir().glob("*/1/model.py")}
    assert with_model_py == set(PYTHON_MODELS)
    here = Path(__file__).parent
    assert all((here / f"test_{model}_model.py").is_file() for model in PYTHON_MODELS)


def test_the_packaged_model_files_are_the_tested_ones(cpu_repo):
    for model in PYTHON_MODELS:
        assert (cpu_repo / model / "1" / "model.py").read_bytes() == model_source(model).read_bytes()


def test_importing_a_model_leaves_sys_modules_as_it_was():
    before = sys.modules.get(PB_MODULE)
    module = import_model("postprocessing")
    assert module.pb_utils.__name__ == "tests.triton_repo.pb_utils_standin"
    assert sys.modules.get(PB_MODULE) is before and module.__name__ not in sys.modules
