"""Issue 17: a scorer failing under `on_failure: stop` on one rank stops every rank, with the same message.

The real GRPO step under Lightning DDP with 2 gloo processes (tests/scripts/rank_stop_run.py): only rank
1's scorer fails. Without the agreement at the step boundary, rank 0 went on to the next collective and
waited there (or died of a closed connection, with another message). The single-process path is unchanged
(`call_on_every_rank` is `fn()` there).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from quark_lightning.infra.distributed import agree_on_failure, call_on_every_rank
from quark_lightning.matrix.alignment_matrix import ScorerFailureError
from tests.conftest import REPO


def test_one_process_keeps_the_original_error():
    assert agree_on_failure(None) is None and agree_on_failure("x") == "x"
    assert call_on_every_rank(lambda: 5) == 5

    def fail():
        raise ScorerFailureError("matrix dimension 'flaky': stop")

    with pytest.raises(ScorerFailureError, match="matrix dimension 'flaky'"):
        call_on_every_rank(fail)


@pytest.mark.slow
def test_a_stop_failure_on_rank_1_stops_both_ranks_with_the_same_message(tmp_path, tiny_model_dir):
    cmd = [sys.executable, "tests/scripts/rank_stop_run.py", str(tmp_path), tiny_model_dir]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0, proc.stderr[-3000:]
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert messages[0] == messages[1], messages
    assert messages[0].startswith("RankStoppedError: rank 1: matrix dimension 'flaky'"), messages[0]
    assert "the judge of rank 1 is down" in messages[0] and "on_failure.policy is 'stop'" in messages[0]
