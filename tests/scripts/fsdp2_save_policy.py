"""FSDP2 on 2 CPU processes (gloo): save a sharded LoRA policy (on a merged SFT adapter) with save_policy.

    python tests/scripts/fsdp2_save_policy.py MODEL_DIR SFT_ADAPTER OUT_DIR

Each rank builds the same policy (base + merged SFT adapter + a fresh RL adapter, seeded, with a perturbed
lora_B); rank 0 writes its logits before sharding to OUT_DIR/expected.pt. Then the policy is sharded
with the project's `shard_module` (fully_shard per decoder layer), every rank gathers
`distributed.full_state_dict`, and rank 0 saves it with `run.save_policy(..., save_base=True)` to
OUT_DIR/policy, as `run.save_outputs` does under trainer=fsdp2.
"""

import os
import socket
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2


def chat_inputs(tokenizer):
    msgs = [{"role": "user", "content": "How much paracetamol can an adult take in a day?"}]
    return tokenizer.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def worker(rank: int, model_dir: str, adapter: str, out_dir: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh

    from quark_lightning.infra.distributed import full_state_dict, is_sharded
    from quark_lightning.infra.strategies import shard_module
    from quark_lightning.models.loading import apply_lora, load_causal_lm, merge_sft_adapter
    from quark_lightning.models.saving import save_policy

    loaded = load_causal_lm(model_dir)
    torch.manual_seed(0)  # the same lora_A init on every rank (Lightning seeds every rank alike)
    policy = apply_lora(merge_sft_adapter(loaded.model, adapter), 4, 8, 0.0, "all-linear")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    policy.eval()
    if rank == 0:
        with torch.no_grad():
            torch.save(policy(**chat_inputs(loaded.tokenizer)).logits, os.path.join(out_dir, "expected.pt"))
    shard_module(policy, init_device_mesh("cpu", (WORLD,)))
    assert is_sharded(policy)
    full = full_state_dict(policy)  # a collective: every rank gathers, rank 0 gets the tensors
    if rank == 0:
        save_policy(policy, loaded.tokenizer, os.path.join(out_dir, "policy"), full, save_base=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    model_dir, adapter, out_dir = sys.argv[1:4]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(model_dir, adapter, out_dir, port), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()
