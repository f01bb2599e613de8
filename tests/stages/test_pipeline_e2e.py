"""The whole paradigm through the real `train.py` (+experiment=pipeline_smoke), as a user runs it:
killed during RL, rerun with the same command (RL resumes, earlier stages are not redone), rerun again
(everything skipped), and the export loaded by plain transformers / peft in a fresh process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow

STAGES = ("foundation_sft", "expert_cloning", "orm", "online_rm", "rfn_calibration", "grpo", "export")
MAX_STEPS = 6


def command(run_dir) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "+experiment=pipeline_smoke",
        f"hydra.run.dir={run_dir}",
        f"trainer.max_steps={MAX_STEPS}",
    ]


def env(cache) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(cache))


def kill_during_rl(run_dir, cache) -> None:
    """Start the pipeline and SIGKILL it once RL has written its first checkpoint."""
    ckpt = run_dir / "grpo" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(command(run_dir), cwd=REPO, env=env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 900
    while not ckpt.exists():
        assert proc.poll() is None, "the pipeline ended before RL checkpointed"
        assert time.time() < deadline, "no RL checkpoint within 15 minutes"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    run_dir, cache = tmp / "run", tmp / "cache"
    kill_during_rl(run_dir, cache)
    killed_step = torch.load(run_dir / "grpo" / "checkpoints" / "last.ckpt", weights_only=False)[
        "global_step"
    ]
    resumed = subprocess.run(
        command(run_dir), cwd=REPO, env=env(cache), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return run_dir, cache, killed_step, resumed


def test_rerun_after_a_kill_resumes_rl_without_redoing_earlier_stages(pipeline):
    run_dir, _, killed_step, resumed = pipeline
    out = resumed.stdout
    assert 1 <= killed_step < MAX_STEPS
    for name in STAGES[:5]:
        assert (
            f"{name} (" in out
            and f"{name} ({json.loads((run_dir / name / 'stage.json').read_text())['kind']}): done earlier, skipped"
            in out
        )
    assert "grpo (grpo): resuming the interrupted stage" in out
    assert f"Resuming from {run_dir / 'grpo' / 'checkpoints' / 'last.ckpt'}" in out
    assert "RFN: using the frozen statistics restored from the checkpoint" in out
    final = torch.load(run_dir / "grpo" / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == MAX_STEPS
    for name in STAGES:
        assert json.loads((run_dir / name / "stage.json").read_text())["status"] == "done"


def test_summary_shows_every_category_at_the_end_of_rl_vs_the_cloned_reference(pipeline):
    run_dir = pipeline[0]
    summary = (run_dir / "pipeline_summary.md").read_text()
    assert f"end of RL (step {MAX_STEPS}) vs the cloned reference (step 0)" in summary
    for category in ("format", "expert", "fundamental", "online"):
        assert f"| **{category}** | (category) |" in summary
    assert "| grpo | grpo | resumed |" in summary and "| orm | reward_model | skipped |" in summary


def test_third_run_skips_everything(pipeline):
    run_dir, cache, _, _ = pipeline
    again = subprocess.run(
        command(run_dir), cwd=REPO, env=env(cache), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, skipped") == len(STAGES)


def test_changed_rl_config_is_refused_with_the_fix(pipeline):
    run_dir, cache, _, _ = pipeline
    proc = subprocess.run(command(run_dir) + ["algorithm.beta=0.5"], cwd=REPO, env=env(cache),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert "pipeline stage 'rfn_calibration'" in proc.stderr and "algorithm.beta" in proc.stderr
    assert "pipeline.rerun_from=rfn_calibration" in proc.stderr and "Traceback" not in proc.stderr


LOAD_EXPORT = textwrap.dedent(
    """
    import json, sys, torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export, expert, foundation = sys.argv[1:4]
    tok = AutoTokenizer.from_pretrained(export + "/adapter")
    msgs = [{"role": "user", "content": "How much paracetamol can an adult take in a day?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    adapted = AutoPeftModelForCausalLM.from_pretrained(export + "/adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(export + "/merged").eval()
    new = merged.generate(**enc, max_new_tokens=12, do_sample=False)[0, enc["input_ids"].shape[1]:]
    text = tok.decode(new)
    adapted.generate(**enc, max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        a = adapted(**enc).logits
        m = merged(**enc).logits
        with adapted.disable_adapter():
            ref = adapted(**enc).logits
        sft = AutoModelForCausalLM.from_pretrained(expert).eval()(**enc).logits
        base = AutoModelForCausalLM.from_pretrained(foundation).eval()(**enc).logits
    print(json.dumps({
        "text": text,
        "new_tokens": int(new.numel()),
        "merged_vs_adapter": float((a - m).abs().max()),
        "reference_vs_sft": float((ref - sft).abs().max()),
        "reference_vs_base": float((ref - base).abs().max()),
        "rl_vs_reference": float((a - ref).abs().max()),
    }))
    """
)


def test_export_loads_with_plain_transformers_and_peft_in_a_fresh_process(pipeline):
    run_dir = pipeline[0]
    export = run_dir / "export"
    card = (export / "README.md").read_text()
    assert "library_name: peft" in card and "| **fundamental** | (category) |" in card
    assert (export / "quark_config.yaml").exists()
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_EXPORT, str(export), str(run_dir / "expert_cloning" / "policy"),
         str(run_dir / "foundation_sft" / "policy")],
        env=env(pipeline[1]), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["new_tokens"] >= 1 and isinstance(result["text"], str)  # it generates (4-step smoke model)
    assert result["merged_vs_adapter"] < 1e-4  # merged = base + adapter
    # The RL reference (adapter disabled) is the cloned SFT policy, not the foundation model it was trained on
    assert result["reference_vs_sft"] < 1e-5
    assert result["reference_vs_base"] > 1e-3
    assert result["rl_vs_reference"] > 0  # RL moved the policy
