import json
import subprocess
import sys

from nvlm_deploy.cli import main
from tests.plan import write_config_only


def test_plan_prints_a_table_and_writes_plan_json(tmp_path, capsys):
    model = write_config_only(tmp_path / "NVLM-D-72B")  # config.json only: planned before downloading
    out_json = tmp_path / "out" / "plan.json"
    rc = main(["plan", "--model", str(model), "--gpu", "h100-sxm", "--gpus", "2", "--recipe", "fp8",
               "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("tp 2, pp 1", "memory per GPU (GB)", "rank 0", "kv_cache_free_gpu_mem_fraction   0.56",
                 "266,408 tokens (160 KiB/token, 8-bit)", "max_prompt_embedding_table_size  14336",
                 "decode, batch 1", "vision encoder, 7 tiles", "prefill, 1792 image tokens",
                 "assumed 7 zero heads", "sizes from config.json"):
        assert text in out, text
    plan = json.loads(out_json.read_text())
    assert (plan["tp"], plan["pp"], plan["gpus_used"], plan["gpu"]["slug"]) == (2, 1, 2, "h100-sxm")
    assert plan["recipe"]["name"] == "fp8" and plan["kv_cache_free_gpu_mem_fraction"] == 0.56
    assert plan["max_prompt_embedding_table_size"] == 14336 and plan["kv_capacity_tokens"] == 266_408
    assert plan["limits"]["derived"]["max_seq_len"] == 3840 and plan["max_batch"] == 8
    assert plan["ranks"][0]["vision_engine"] == 13_346_779_392 and plan["ranks"][0]["kv_tokens"] == 266_408
    assert plan["sizes"]["vision_params"] == 6_052_672_640 and plan["assumptions"]
    assert plan["roofline"]["decode_tokens_per_s_batch1"] > 0


def test_limit_flags_and_concurrency_reach_the_plan(tmp_path, capsys):
    model = write_config_only(tmp_path / "m")
    rc = main(["plan", "--model", str(model), "--gpu", "NVIDIA H200", "--gpus", "1", "--recipe", "fp8",
               "--max-images", "2", "--max-tiles-before-thumbnail", "4", "--max-input-len", "4000",
               "--max-output-len", "500", "--max-batch-size", "4", "--concurrency", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    # 2 images x (4 + thumbnail) tiles x 256 rows = 2560 rows per request, x 4 requests
    assert "max_prompt_embedding_table_size  10240 (4 requests x 2560 rows)" in out
    assert "input 4000, output 500 (max_seq_len 4500), batch 4" in out


def test_impossible_plan_exits_1_with_the_reason(tmp_path):
    model = write_config_only(tmp_path / "m")
    proc = subprocess.run([sys.executable, "-m", "nvlm_deploy", "plan", "--model", str(model), "--gpu", "h200",
                           "--gpus", "1", "--recipe", "bf16"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: NVLM-D") and "What would fit:" in proc.stderr
    assert "more GPUs: 2 x h200" in proc.stderr


def test_plan_on_the_tiny_checkpoint_reads_its_headers(tiny_checkpoint, capsys):
    assert main(["plan", "--model", str(tiny_checkpoint), "--gpu", "l4"]) == 0
    out = capsys.readouterr().out
    assert "sizes from safetensors headers" in out and "assumption" not in out and "tp 1, pp 1" in out
