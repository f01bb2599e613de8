"""The `judge` config group (`conf/judge/*.yaml`), validated when it is built.

One judge serves every LLM-judged place of a run: GARM's `llm` verifier (`correctness_atomic`), the
rubric `llm` matcher (`expert_rubric`), the compliance verifier (`compliance`) and the HealthBench
grader (`evaluate.py`). Scorers receive the composed group as `judge: ${oc.select:judge,null}` and build
it with `build_judge` only when they need it, so a rules-only run never loads or contacts a judge.

    kind            local (an HF causal LM in this process) | openai (any OpenAI-compatible server:
                    vLLM, SGLang, TGI, llama.cpp, `transformers serve`, a hosted API)
    model           local: a hub name or local directory; openai: the model name the server expects
    base_url        openai: e.g. http://127.0.0.1:8000/v1 (the `/chat/completions` path is appended)
    api_key_env     openai: the NAME of the environment variable holding the key (never the key itself);
                    null = send no Authorization header
    max_concurrency openai: requests in flight at once
    timeout_s       openai: seconds one request may take (connect + read)
    max_retries     openai: extra attempts after a timeout, a connection error, 429 or 5xx, with
                    exponential backoff (`backoff_s` * 2^attempt, times a random factor in [0.5, 1.5))
    temperature     0 = greedy (the default: verdicts must be reproducible)
    max_tokens      longest reply
    response_format null | json_object (sent as OpenAI's `response_format`; some servers ignore it)
    cache_dir       replies cached on disk by (model, messages, decoding settings); null = no cache
    batch_size      local: prompts generated together
    dtype           local: float32 | bfloat16 | float16
    trust_remote_code  local: passed to from_pretrained
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from quark_lightning.infra.errors import ConfigError

KINDS = ("local", "openai")
RESPONSE_FORMATS = (None, "json_object")
DTYPES = ("float32", "bfloat16", "float16")


def _int_at_least(lo: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _optional_str(v: Any) -> bool:
    return v is None or (isinstance(v, str) and bool(v.strip()))


# key -> (check, what is expected)
_CHECKS: dict[str, tuple[Any, str]] = {
    "kind": (lambda v: v in KINDS, f"one of {list(KINDS)}"),
    "model": (_optional_str, "null or a non-empty string"),
    "base_url": (
        lambda v: v is None or (isinstance(v, str) and v.startswith(("http://", "https://"))),
        "null or an http(s) URL such as http://127.0.0.1:8000/v1",
    ),
    "api_key_env": (
        lambda v: v is None or (isinstance(v, str) and v.replace("_", "").isalnum()),
        "null or the NAME of an environment variable (letters, digits, _), e.g. OPENAI_API_KEY",
    ),
    "max_concurrency": (_int_at_least(1), "an integer >= 1"),
    "timeout_s": (lambda v: _number(v) and v > 0, "a number of seconds > 0"),
    "max_retries": (_int_at_least(0), "an integer >= 0"),
    "backoff_s": (lambda v: _number(v) and v >= 0, "a number of seconds >= 0"),
    "temperature": (lambda v: _number(v) and v >= 0, "a number >= 0 (0 = greedy)"),
    "max_tokens": (_int_at_least(1), "an integer >= 1"),
    "response_format": (lambda v: v in RESPONSE_FORMATS, "null or json_object"),
    "cache_dir": (_optional_str, "null or a directory"),
    "batch_size": (_int_at_least(1), "an integer >= 1"),
    "dtype": (lambda v: v in DTYPES, f"one of {list(DTYPES)}"),
    "trust_remote_code": (lambda v: isinstance(v, bool), "true or false"),
}


@dataclass(frozen=True)
class JudgeConfig:
    kind: str = "local"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 2
    backoff_s: float = 0.5
    temperature: float = 0.0
    max_tokens: int = 64
    response_format: str | None = None
    cache_dir: str | None = None
    batch_size: int = 8
    dtype: str = "float32"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:  # built directly or from a config: checked the same way
        problems = [
            f"judge.{key}: got {getattr(self, key)!r}, expected {expected}. Fix: set judge.{key}=<{expected}>."
            for key, (ok, expected) in _CHECKS.items()
            if not ok(getattr(self, key))
        ]
        if self.kind == "openai" and not self.base_url and not problems:
            problems.append(
                "judge.base_url: judge=openai needs the server's URL. "
                "Fix: judge.base_url=http://HOST:PORT/v1 (and judge.model=<the served model's name>)."
            )
        if problems:
            raise ConfigError("invalid judge config:\n  - " + "\n  - ".join(problems))

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> JudgeConfig:
        """From the composed `judge` group (a DictConfig or dict); unknown keys are refused by name."""
        if cfg is None:
            return cls()
        if isinstance(cfg, JudgeConfig):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"judge: got {cfg!r}, expected a mapping (choose it with judge=local|openai)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(
                f"judge.{unknown[0]}: unknown key. Fix: use only {', '.join(sorted(known))} "
                f"(see conf/judge/*.yaml)."
            )
        return cls(**{k: cfg[k] for k in cfg})

    def describe(self) -> str:
        """For logs and errors: the endpoint and model, never a key."""
        if self.kind == "openai":
            return f"judge {self.base_url} (model {self.model})"
        return f"local judge {self.model}"

    def decoding(self) -> dict[str, Any]:
        """The settings that change a reply, part of the cache key."""
        return {
            "temperature": float(self.temperature),
            "max_tokens": int(self.max_tokens),
            "response_format": self.response_format,
        }
