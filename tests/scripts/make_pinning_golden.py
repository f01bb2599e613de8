"""Write the golden files of tests/shaping/test_pinning.py from the current code (CPU).

    python tests/scripts/make_pinning_golden.py            # every arm
    python tests/scripts/make_pinning_golden.py rfn gdpo   # some arms
    python tests/scripts/make_pinning_golden.py --out run.json rfn_tadw   # one run of one arm, to a file
                                                           # (test_the_golden_run_holds_on_other_kernels)

Each arm runs twice; the files are written only when both runs agree exactly (a nondeterministic run
must not become golden). Regenerate only on purpose and say why in the commit message (see the test's
docstring).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.shaping.test_pinning import ARMS, GOLDEN_DIR, diff, run_arm  # noqa: E402


def dumps(obj, indent: int = 0) -> str:
    """JSON with one line per list of numbers (short diffs when a regeneration moves a few numbers)."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in sorted(obj.items())]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        return "[\n" + ",\n".join(pad + dumps(x, indent + 1) for x in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj)


def main(arms: list[str]) -> int:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"unknown arm(s) {unknown}; arms: {', '.join(ARMS)}", file=sys.stderr)
        return 2
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            first, second = (json.loads(json.dumps(run_arm(arm, Path(tmp) / f"run{i}"))) for i in (1, 2))
            problems = diff(first, second)
            if first != second:
                print(f"{arm}: two runs differ, not written:\n" + "\n".join(problems[:20]), file=sys.stderr)
                return 1
            path = GOLDEN_DIR / f"{arm}.json"
            text = dumps(first) + "\n"
            assert json.loads(text) == first
            path.write_text(text)
            print(f"{arm}: wrote {path.relative_to(REPO)}")
    return 0


def write_one_run(out: str, arm: str) -> int:
    """One run of `arm`, as the test sees it, written to `out` (no golden file is touched)."""
    if arm not in ARMS:
        print(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        Path(out).write_text(json.dumps(run_arm(arm, Path(tmp))))
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--out"]:
        if len(args) != 3:
            print("usage: make_pinning_golden.py --out FILE ARM", file=sys.stderr)
            sys.exit(2)
        sys.exit(write_one_run(args[1], args[2]))
    sys.exit(main(args or list(ARMS)))
