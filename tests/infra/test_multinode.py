"""Two-"node" launches on localhost, as a cluster would start them: torchrun once per node, and SLURM.

Each launch runs the smoke experiment (`trainer=multinode` on CPU: ddp over gloo, 2 nodes x 1 process)
into ONE run directory (`hydra.run.dir` given explicitly, as the README's "Scaling out" says), with
tests/scripts/rank_probe.py recording on each rank what Lightning read from the launcher's environment
and what the rank trained. Checked:

- each rank saw world size 2 and 2 nodes, its own node rank (0, 1) and local rank 0, and the cluster
  environment of its launcher (torchrun: TorchElasticEnvironment; SLURM: SLURMEnvironment);
- both ranks ran the same optimizer steps (global_step = the smoke's 3) and batches, and ended with the
  same policy (equal parameter checksums: DDP averaged the gradients);
- the run directory has one checkpoint, `checkpoints/last.ckpt` at step 3, and rank 0's outputs
  (summary.json, the policy).

SLURM: no `srun` here, so the two processes are started plainly with the variables srun would set and
Lightning's SLURMEnvironment reads (SLURM_NTASKS, SLURM_NTASKS_PER_NODE, SLURM_PROCID, SLURM_LOCALID,
SLURM_NODEID, SLURM_JOB_NAME, SLURM_JOB_ID, SLURM_NODELIST) plus MASTER_ADDR/MASTER_PORT.

The smoke's tiny model is built once before the launch (two ranks starting at the same moment would
both build it into the same cache; on a cluster, build or download the model before the job).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow

TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(run_dir) -> list[str]:
    return [
        "+experiment=smoke",
        "trainer=multinode",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.precision=32-true",
        f"hydra.run.dir={run_dir}",
        "+callbacks.rank_probe._target_=tests.scripts.rank_probe.RankProbe",
        f"+callbacks.rank_probe.out_dir={run_dir}/probe",
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """QUARK_CACHE with the smoke's tiny model already built (what both ranks then load)."""
    cache = tmp_path_factory.mktemp("cache")
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(cache))
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from quark_lightning.cli.run import build_datamodule, load_model\n"
        f"with initialize_config_dir(config_dir={os.path.join(REPO, 'conf')!r}, version_base='1.3'):\n"
        "    cfg = compose('train', ['+experiment=smoke', 'run_dir=.'])\n"
        "load_model(cfg.model, build_datamodule(cfg).load())\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=TIMEOUT_S)
    return str(cache)


def launch(commands: list[tuple[list[str], dict]]) -> list[subprocess.CompletedProcess]:
    """Start every (command, env) at once, wait for all; on a failure or timeout kill the others."""
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd, env in commands
    ]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
            outputs.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
            if proc.returncode != 0:
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for result in outputs:
        assert result.returncode == 0, result.stdout[-4000:]
    assert len(outputs) == len(procs)
    return outputs


def check_two_nodes(run_dir, environment: str) -> None:
    ranks = [json.loads((run_dir / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, rank in enumerate(ranks):
        assert (rank["global_rank"], rank["node_rank"], rank["local_rank"]) == (r, r, 0)
        assert (rank["world_size"], rank["num_nodes"]) == (2, 2)
        assert rank["cluster_environment"] == environment
        assert rank["main_address"] == "127.0.0.1"
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 3  # the smoke's trainer.max_steps
    assert ranks[0]["batches"] == ranks[1]["batches"] == 3
    assert ranks[0]["policy_checksum"] == pytest.approx(ranks[1]["policy_checksum"], rel=1e-12, abs=1e-9)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["last.ckpt"]
    assert (run_dir / "summary.json").exists() and (run_dir / "policy" / "config.json").exists()


def test_two_torchrun_nodes_on_localhost(tmp_path, cache):
    run_dir, port = tmp_path / "run", free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=cache, OMP_NUM_THREADS="1")
    commands = [
        (
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                "train.py", *overrides(run_dir),
            ],
            env,
        )
        for node in (0, 1)
    ]  # fmt: skip
    launch(commands)
    check_two_nodes(run_dir, "TorchElasticEnvironment")


def test_two_slurm_tasks_on_localhost(tmp_path, cache):
    run_dir, port = tmp_path / "run", free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    base |= {"HF_HUB_OFFLINE": "1", "QUARK_CACHE": cache, "OMP_NUM_THREADS": "1"}
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NAME": "quark-grpo",  # not bash/interactive, which Lightning treats as no SLURM
        "SLURM_JOB_ID": "4242",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    commands = [
        (
            [sys.executable, "train.py", *overrides(run_dir)],
            base | slurm | {"SLURM_PROCID": str(r), "SLURM_LOCALID": "0", "SLURM_NODEID": str(r)},
        )
        for r in (0, 1)
    ]
    launch(commands)
    check_two_nodes(run_dir, "SLURMEnvironment")
