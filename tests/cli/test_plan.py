"""``ttdist plan`` as a subprocess: the report, its JSON, and one-line errors naming the input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ttdist.cli import main

ROOT = Path(__file__).resolve().parents[2]


def ttdist(*args: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", "from ttdist.cli import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_report_and_json_agree():
    text = ttdist("plan", "llama-3.1-70b", "--system", "4xtg")
    assert text.returncode == 0, text.stderr
    js = ttdist("plan", "llama-3.1-70b", "--system", "4xtg", "--json")
    plan = json.loads(js.stdout)
    assert plan["system"] == {"name": "4xtg", "mesh": "tg", "shape": "8x4", "chips_per_replica": 32, "count": 4}
    assert plan["replicas"] == 4 and plan["users_per_replica"] == 32
    assert plan["precision"]["ff1_ff3"] == "bfloat4_b" and plan["precision"]["kv_cache"] == "bfloat8_b"
    assert {"weights", "kv_page", "kv_per_user", "kv_pages", "max_users", "activations"} <= set(plan["memory"])
    assert plan["decode"]["prefetch"] is True
    tsu = plan["decode"]["tokens_per_s_per_user"]
    assert plan["throughput"]["cluster_tokens_per_s"] == pytest.approx(4 * 32 * tsu)
    assert f"tokens/s/user     {tsu:.1f}" in text.stdout
    assert f"max users         {plan['memory']['max_users']:,} at context 128" in text.stdout


def test_config_json_file(tmp_path):
    cfg = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
           "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    proc = ttdist("plan", str(tmp_path / "config.json"), "--system", "n300", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["memory"]["max_users"] > 32


@pytest.mark.parametrize("args,needle", [
    (["llama-5"], "model: unknown model 'llama-5'"),
    (["{bad}"], "model: unknown model"),
    (["llama-3.1-70b", "--system", "n150"], "--system: llama-3.1-70b does not fit on n150"),
    (["llama-3.1-8b", "--system", "z9"], "--system: unknown mesh 'z9'"),
    (["llama-3.1-8b", "--precision", "fp3"], "--precision: unknown precision 'fp3'"),
    (["llama-3.1-8b", "--kv-dtype", "fp3"], "--kv-dtype:"),
    (["llama-3.1-8b", "--batch", "0"], "--batch: must be an integer >= 1"),
    (["llama-3.1-8b", "--context", "0"], "--context:"),
    (["llama-3.1-8b", "--replicas", "-1"], "--replicas:"),
])
def test_bad_input_is_one_line_naming_the_field(args, needle, capsys):
    code = main(["plan", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert needle in lines[0], lines[0]


def test_config_without_llama_fields(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    proc = ttdist("plan", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"ttdist plan: error: model: {tmp_path / 'config.json'}: not a Llama config "
                                   "(missing vocab_size, intermediate_size, num_hidden_layers, num_attention_heads)")
