"""End-to-end runs through the real `train.py` and its Hydra config (subprocesses, like a user)."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, write_jsonl

pytestmark = pytest.mark.slow


def train(tmp_path, *overrides, cache=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(cache or tmp_path / "cache"))
    cmd = [sys.executable, "train.py", "+experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def event_tags(run_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in glob.glob(os.path.join(run_dir, "tensorboard", "grpo", "events.out.tfevents.*")):
        acc = EventAccumulator(path)
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["tensors"])
    return tags


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    proc = train(tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc


def test_smoke_run_logs_every_dimension_and_checkpoints(smoke_run):
    tmp, proc = smoke_run
    run_dir = tmp / "run"
    tags = event_tags(run_dir)
    for dim in ("format_rules", "expert_rubric", "safety"):
        assert f"rewards/{dim}/mean" in tags and f"rewards/{dim}/std" in tags
    assert {
        "reward",
        "kl",
        "entropy",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "step_time",
    } <= tags
    assert any(t.startswith("samples") for t in tags)  # sample completions as TensorBoard text
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "policy" / "config.json").exists()
    assert (run_dir / "summary.json").exists()
    assert "start" in proc.stdout and "checkpoint" in proc.stdout


def test_resume_from_checkpoint_continues_the_step_count(smoke_run, tmp_path):
    tmp, _ = smoke_run
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    assert "shaping.loop_gain" in state["state_dict"]  # the reward-shaping state, in the checkpoint once
    proc = train(tmp_path, f"ckpt_path={ckpt}", "trainer.max_steps=5", cache=tmp / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert resumed["global_step"] == 5
    assert f"Resuming from {ckpt}" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["reward"]["steps"] == 5  # the reward history of steps 1-3 came back too


def held_out_table(history_entry: dict) -> dict[str, tuple[float, float]]:
    """dimension -> (held-out mean, pass rate) of one evaluation (NaN as None, so tables compare)."""
    def num(x):
        return None if x is None or x != x else round(float(x), 9)

    return {n: (num(r["mean"]), num(r["pass_rate"])) for n, r in history_entry["dimensions"].items()}


def test_the_policy_evaluated_as_configured_reproduces_the_last_held_out_table(smoke_run, tmp_path):
    """The closed loop's held-out tables use the matrix as configured (a yardstick that does not move);
    the run's reward state, its trained reward, is what evaluate.py reward_state=... scores with."""
    tmp, _ = smoke_run
    run = tmp / "run"
    last_report = sorted((run / "eval").glob("step_*/metrics.json"))[-1]
    last = json.loads(last_report.read_text())["history"][-1]  # the summary's "end" column
    state = json.loads((run / "reward_state.json").read_text())
    assert state["step"] == last["step"] == 3 and state["dimensions"] == list(last["dimensions"])
    # the loop changed the reward during the run (format-rule weights at step 2): the state matters
    assert any(w != 1.0 for rules in state["loop"]["rule_weights"].values() for w in rules.values())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"]["shaping._extra_state"]["loop"] == state["loop"]  # one state, two files

    def evaluate(name, *extra):
        env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp / "cache"))
        cmd = [sys.executable, "evaluate.py", f"hydra.run.dir={tmp_path / name}", "matrix=demo", "heldout=true"]
        cmd += ["limit=4", "rollout.max_new_tokens=24", f"models={{rl: '{run / 'policy'}'}}", *extra]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads((tmp_path / name / "rl" / "metrics.json").read_text())["history"][-1]

    as_configured = evaluate("as_configured")
    assert held_out_table(as_configured) == held_out_table(last)
    with_state = evaluate("with_state", f"reward_state={run / 'reward_state.json'}")
    from_ckpt = evaluate("from_ckpt", f"reward_state={run / 'checkpoints' / 'last.ckpt'}")
    assert held_out_table(from_ckpt) == held_out_table(with_state)  # one state, two files
    # the same answers under the trained reward (the raised rule weights) score differently
    assert held_out_table(with_state)["format_rules"] != held_out_table(last)["format_rules"]


def test_model_hf_loads_a_directory_saved_by_other_code(tmp_path):
    """A Qwen2-architecture model saved by plain transformers code, used via model=hf."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["Rest, fluids and see a doctor if it gets worse."] * 50,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    model_dir = tmp_path / "someone-elses-model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    proc = train(tmp_path, "model=hf", f"model.name_or_path={model_dir}", "warmstart=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rewards/safety/mean" in event_tags(tmp_path / "run")


def test_malformed_prompt_file_stops_before_training(tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"id": "x-1", "messages": [{"role": "user", "content": "Hi?"}], "reference": "Hello."},
            {"id": "x-2", "messages": [{"role": "patient", "content": "Hi?"}], "reference": "Hello."},
        ],
    )
    proc = train(tmp_path, f"data.path={bad}")
    assert proc.returncode == 2
    assert f"{bad}:2: field 'messages[0].role': got 'patient'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing heavy started


def test_bad_config_value_stops_with_the_key(tmp_path):
    proc = train(tmp_path, "algorithm.loss_type=ppo")
    assert proc.returncode == 2
    assert "algorithm.loss_type: got 'ppo'" in proc.stderr and "Traceback" not in proc.stderr
