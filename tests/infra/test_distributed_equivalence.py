"""Two CPU processes (gloo) give the single-process result with the same global batch.

Each strategy runs tests/scripts/equivalence_run.py: 2 GRPO steps with RFN + TADW, beta 0.04, for the
loss types grpo, dr_grpo and dapo, and for scale_rewards=batch and the gdpo aggregator (whose batch
statistics are gathered over ranks), on a global batch of 4 prompts x 4 completions (2 prompts per rank
with 2 processes). The rollout engine returns fixed completions per prompt (sampling depends on each
rank's RNG); everything after it is the real code. Compared with the single-process run:

- advantages and rewards of every completion (rank 0's rows then rank 1's = the single-process rows);
- the logged (rank-0) metrics, which are statistics of the whole batch: loss, reward, reward_std, KL,
  entropy, gradient norm, lengths, token count;
- the RFN statistics and the TADW weights after the run;
- every policy parameter after the run (and it did move).

Tolerances: 1e-5 absolute on advantages/rewards/statistics, 1e-5 relative + 1e-7 absolute on metrics, 1e-5
absolute on parameters after 2 AdamW steps of lr 1e-3 (the gradient all-reduce sums in another order than
one backward over the batch, and Adam's division by sqrt(v) magnifies that rounding where gradients are
tiny; measured: 2.1e-7 with scale_rewards=group, 3.9e-6 with scale_rewards=batch, whose advantages are
equal to the bit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from quark_lightning.models.loading import load_causal_lm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# loss types, plus batch-level statistics: scale_rewards=batch and the gdpo aggregator (gathered over ranks)
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "grpo@batch", "dr_grpo@gdpo")
METRICS = (
    "loss",
    "reward",
    "reward_std",
    "kl",
    "entropy",
    "grad_norm",
    "frac_reward_zero_std",
    "completions/mean_length",
    "completions/max_length",
    "num_tokens",
)


def run_strategy(out_dir, strategy: str, devices: int, model_dir: str) -> None:
    cmd = [
        sys.executable,
        "tests/scripts/equivalence_run.py",
        str(out_dir),
        strategy,
        str(devices),
        model_dir,
        ",".join(LOSS_TYPES),
        "2",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def load(out_dir, loss_type: str, rank: int) -> dict:
    return json.loads((out_dir / f"{loss_type}_rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("single")
    run_strategy(out, "single", 1, tiny_model_dir)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_equal_one_process(strategy, single_run, tmp_path, tiny_model_dir):
    run_strategy(tmp_path, strategy, 2, tiny_model_dir)
    initial = dict(load_causal_lm(tiny_model_dir).model.named_parameters())
    for loss_type in LOSS_TYPES:
        one = load(single_run, loss_type, 0)
        ranks = [load(tmp_path, loss_type, r) for r in (0, 1)]
        for s, step in enumerate(one["steps"]):
            parts = [r["steps"][s] for r in ranks]
            assert step["prompt_ids"] == parts[0]["prompt_ids"] + parts[1]["prompt_ids"]
            for key in ("advantages", "reward"):
                torch.testing.assert_close(
                    torch.tensor(parts[0][key] + parts[1][key]), torch.tensor(step[key]), atol=1e-5, rtol=0
                )
            for name in METRICS:
                got, want = parts[0]["metrics"][name], step["metrics"][name]
                assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (loss_type, s, name)
        for key in ("rfn_mean", "rfn_std", "weights"):
            for r in ranks:
                torch.testing.assert_close(
                    torch.tensor(r["final"][key]), torch.tensor(one["final"][key]), atol=1e-5, rtol=0
                )
        assert ranks[0]["final"]["sharded"] is (strategy == "fsdp2")
        want = torch.load(single_run / f"{loss_type}_params.pt")
        got = torch.load(tmp_path / f"{loss_type}_params.pt")
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=1e-5, rtol=0, msg=f"{loss_type} {name}")
        moved = max(float((want[n] - initial[n].detach()).abs().max()) for n in want)
        assert moved > 1e-4  # the steps did train


def test_token_level_scale_is_one_on_a_single_process():
    from quark_lightning.infra.distributed import token_level_rank_scale

    assert token_level_rank_scale(torch.tensor(37.0)) == 1.0
