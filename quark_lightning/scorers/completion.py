"""Format dimension `complete`: did the answer finish, or did the rollout cut it at the completion cap?

    complete(answer) = 0  where the engine stopped it at rollout.max_new_tokens without an end of sequence
                       1  where it ended by itself
                       NaN for text the engine did not produce here (a reference answer, a file's
                       response): whether it was cut is unknown, and it is not guessed from the text

The flag comes from the rollout (`rollout/engine.py` `Completion.truncated`), not from the text: a clean-
ending rule can be gamed, and was. In the real demo with a `clean_ending`-only gate, the policy learned
sentences whose cut lands on a full stop: 62.5% of held-out answers cut at the cap, yet the rule passed 62.5%.

Used as a gate (conf/experiment/real_demo.yaml: `gate: {below: 1.0, mode: cap, value: -1.0}`), a cut answer
ranks strictly below every answer of its group that finished (shaping/aggregation.py `apply_gates`), as an
unsafe one does. That gives the policy a reason to stop inside the cap that rewards which pay for content
(and so for words) cannot outbid; a group whose answers are all cut still learns from its other
dimensions. DAPO (arXiv 2503.14476) shapes overlong answers by their token count for the same reason; here
it is one more dimension of the matrix, reported and normalized like the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quark_lightning.scorers.interface import ScoreResult

CUT = "complete: the answer was cut at the completion cap (rollout.max_new_tokens) before it ended"


class CompletionScorer:
    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        scores, findings = [], []
        for text in completions:
            truncated = getattr(text, "truncated", None)
            scores.append(float("nan") if truncated is None else 0.0 if truncated else 1.0)
            findings.append([CUT] if truncated else [])
        return ScoreResult.from_lists(scores, findings)
