"""Score responses against an alignment matrix, outside training.

    python -m quark_lightning.cli.score --input responses.jsonl [--output FILE] [--matrix NAME]
        [--reward-state RUN/reward_state.json] [override ...]

Input: one JSON object a line, a prompt object (docs/design.md section 3) plus `"response"`, the answer to
score. Every row is checked with the prompt schema before any scoring; a bad row (including a missing or
non-string `response`) is reported as `FILE:LINE: field 'x': ...`. An empty or whitespace-only
`response` is a real model output: it is scored (each dimension says what it makes of it) and flagged.
Several responses to one prompt (the same `id`) need a distinct `response_id` or `model` (both
optional, repeated in the output); two rows with the same id and the same (or no) `response_id` and
`model` are refused, naming both lines, since the output could not tell them apart. Rubric patterns
are compiled when the file is read and every match runs under a time bound (infra/text.py); one that
runs past it fails its sample, naming FILE:LINE and the pattern.

The matrix is composed with Hydra from the repository's `conf/` tree exactly as training composes it
(`config_name="train"`, `matrix=NAME` plus any further overrides such as
`matrix.dimensions.safety.weight=3`), then built with `build_matrix`. Without `--matrix`, the matrix
selected by `conf/train.yaml` is used. `--reward-state` (a training run's `reward_state.json`, or its
`.ckpt`) scores with the reward that run ended with: its closed loop's format-rule and rubric-item weights
and mined bad phrases go into the matrix's scorers (loop/loop_state.py); the matrix must be the run's.

Output: one JSON object a line, to stdout or `--output FILE`:

    {"id": ..., ["response_id": ..., "model": ...,] "scores": {dim: float | null},
     "findings": {dim: [...]}, "failed": [dim, ...], "flags": [...], "reward": float | null,
     "vetoed_by": [dim, ...]}

`null` marks a dimension that does not apply to the sample (NaN score) or whose scorer failed on it;
`failed` lists the latter (their findings say why). `flags` says what is unusual about the input
("empty response", "whitespace-only response"). `reward` is the *static* weighted sum over the
applicable dimensions, nansum_k(w_k * s_k) with the matrix's configured weights, **after the matrix's
gates** (a gate dimension scoring below its threshold, or failing with `gate.on_failure: veto`, caps
or sets the reward, as in training; `vetoed_by` names the gates that fired): raw scores, no
reference-frozen normalization and no adaptive weighting (those need the reference policy's
rollouts; see quark_lightning.shaping). It is `null` when no dimension applies.

Errors in the input or the matrix print one clear message to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

import torch

from quark_lightning.cli.entry import conf_dir
from quark_lightning.data.schema import (
    DataValidationError,
    check_text,
    read_jsonl,
    register_record_patterns,
    show,
    validate_prompt,
)
from quark_lightning.infra.errors import ConfigError, QuarkError
from quark_lightning.loop.loop_state import load_reward_state
from quark_lightning.matrix.alignment_matrix import AlignmentMatrix, MatrixScores
from quark_lightning.matrix.build import build_matrix
from quark_lightning.shaping.aggregation import apply_gates, weighted_sum

CONF_DIR = conf_dir()  # the installed package's config tree, else the checkout's conf/


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m quark_lightning.cli.score",
        description="Score responses (prompt objects plus 'response') against an alignment matrix.",
    )
    ap.add_argument("--input", required=True, help="JSONL of prompt objects, each with a 'response'")
    ap.add_argument("--output", default=None, help="write JSONL here instead of stdout")
    ap.add_argument(
        "--matrix", default=None, help="a config under conf/matrix/ (default: the train.yaml one)"
    )
    ap.add_argument(
        "--config-dir", default=str(CONF_DIR), help="the Hydra config tree (default: the package's conf/)"
    )
    ap.add_argument("--batch-size", type=int, default=64, help="responses scored per matrix call")
    ap.add_argument(
        "--reward-state", default=None, help="a run's reward_state.json or .ckpt: score with its trained reward"
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. matrix.dimensions.safety.weight=3")
    return ap.parse_args(argv)


RESPONSE_KEYS = ("response_id", "model")  # what tells two responses to the same prompt apart


def response_problems(record: dict[str, Any]) -> list[str]:
    """Problems of the response fields of one row: `response` must be a string (empty is allowed: an
    empty completion is a real model output, scored and flagged); `response_id` / `model`, when
    present, a non-empty string (or an integer `response_id`)."""
    response = record.get("response")
    if not isinstance(response, str):
        got = "missing" if response is None else f"got {show(response)}"
        return [f"field 'response': must be a string (the answer to score; \"\" for an empty answer), {got}"]
    problems = check_text(response, "response", required=False)
    for key in RESPONSE_KEYS:
        value = record.get(key)
        if key in record and not (
            (isinstance(value, str) and value.strip() and len(value) <= 200)
            or (key == "response_id" and isinstance(value, int) and not isinstance(value, bool))
        ):
            problems.append(
                f"field '{key}': must be a non-empty string of at most 200 characters"
                f"{' or an integer' if key == 'response_id' else ''}, got {show(value)}"
            )
    return problems


def response_key(record: dict[str, Any]) -> tuple:
    """(id, response_id, model): rows with the same key are the same response given twice."""
    return (record["id"], *(record.get(key) for key in RESPONSE_KEYS))


def duplicate_problem(record: dict[str, Any], first_line: int) -> str:
    given = ", ".join(f"{k} {record[k]!r}" for k in RESPONSE_KEYS if k in record)
    same = f" with the same {given}" if given else ""
    return (
        f"field 'id': {record['id']!r} already used on line {first_line}{same}; the output could not tell "
        "the two apart. Give each response to one prompt a distinct 'response_id' (or 'model'), which the "
        "output repeats, or drop the duplicate line"
    )


def load_responses(path: str) -> list[dict[str, Any]]:
    """Validated rows; raise DataValidationError listing every bad row as FILE:LINE: field ...

    Several responses to one prompt (the same `id`) need a distinct `response_id` or `model`; a row
    that repeats an earlier row's (id, response_id, model) is refused, naming both lines. The rubric
    patterns are registered with their FILE:LINE (a pattern that runs past the time bound names it)."""
    if not Path(path).is_file():
        raise DataValidationError([f"{path}: file not found (pass --input with an existing JSONL file)"])
    records, errors, seen = [], [], {}
    for line, record in read_jsonl(path):
        problems = validate_prompt(record)
        if isinstance(record, dict):
            problems += response_problems(record)
        if not problems and response_key(record) in seen:
            problems.append(duplicate_problem(record, seen[response_key(record)]))
        errors += [f"{path}:{line}: {p}" for p in problems]
        if not problems:
            seen[response_key(record)] = line
            register_record_patterns(record, f"{path}:{line}")
            records.append(record)
    if errors:
        raise DataValidationError(errors)
    if not records:
        raise DataValidationError([f"{path}: no responses found; the file is empty"])
    return records


def compose_matrix_config(config_dir: str, matrix: str | None, overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if not Path(config_dir, "train.yaml").is_file():
        raise ConfigError(
            f"--config-dir {config_dir}: no train.yaml there (pass the repository's conf/ folder)"
        )
    chosen = [f"matrix={matrix}"] if matrix else []
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*chosen, *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        available = ", ".join(sorted(p.stem for p in Path(config_dir, "matrix").glob("*.yaml")))
        if isinstance(err, MissingConfigException):
            raise ConfigError(f"{str(err).splitlines()[0]}. Available matrices: {available}") from err
        raise ConfigError(
            f"could not compose the matrix config: {err}. Available matrices: {available}"
        ) from err
    return cfg.matrix


def build(config_dir: str, matrix: str | None, overrides: Sequence[str]) -> AlignmentMatrix:
    return build_matrix(compose_matrix_config(config_dir, matrix, overrides))


def static_reward(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """nansum_k(w_k * s_k) per row; NaN where every dimension is NaN (the trainer's `sum` aggregation)."""
    return weighted_sum(scores, weights)  # (N, K), (K,) -> (N,)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def input_flags(record: dict[str, Any]) -> list[str]:
    """What is unusual about a row's answer (scored as given): an empty or whitespace-only answer."""
    response = record["response"]
    if not response.strip():
        return ["empty response" if not response else "whitespace-only response"]
    return []


def output_rows(
    records: Sequence[dict[str, Any]],
    result: MatrixScores,
    reward: torch.Tensor,
    vetoed_by: Sequence[list[str]] | None = None,
) -> Iterator[dict]:
    for i, record in enumerate(records):
        yield {
            "id": record["id"],
            **{key: record[key] for key in RESPONSE_KEYS if key in record},
            "scores": {name: _num(float(result.scores[i, k])) for k, name in enumerate(result.names)},
            "findings": {name: list(result.findings[name][i]) for name in result.names},
            "failed": [name for k, name in enumerate(result.names) if bool(result.failed[i, k])],
            "flags": input_flags(record),
            "reward": _num(float(reward[i])),
            "vetoed_by": list(vetoed_by[i]) if vetoed_by is not None else [],
        }


def gated_reward(matrix: AlignmentMatrix, result: MatrixScores) -> tuple[torch.Tensor, list[list[str]]]:
    """The static reward after the matrix's gates, and per row the gate dimensions that vetoed it."""
    gates = matrix.gates()
    reward = static_reward(result.scores, matrix.weights())
    reward, vetoed = apply_gates(reward, result.scores, gates, result.failed)  # (N,), (N, len(gates))
    names = [result.names[k] for k, _ in gates]
    return reward, [[n for n, hit in zip(names, row) if hit] for row in vetoed.tolist()]


def score_records(
    matrix: AlignmentMatrix, records: Sequence[dict[str, Any]], batch_size: int
) -> Iterator[dict]:
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        result = matrix.score(batch, [r["response"] for r in batch])
        yield from output_rows(batch, result, *gated_reward(matrix, result))


def write_rows(rows: Iterator[dict], out: IO[str]) -> int:
    count = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size: got {args.batch_size}, expected an integer >= 1")
        records = load_responses(args.input)
        matrix = build(args.config_dir, args.matrix, args.overrides)
        if args.reward_state:
            load_reward_state(args.reward_state, matrix)  # the run's item-level weights and mined phrases
        sink = open(args.output, "w", encoding="utf-8") if args.output else nullcontext(sys.stdout)
        with sink as out:
            count = write_rows(score_records(matrix, records, args.batch_size), out)
    except BrokenPipeError:  # e.g. `| head`: the reader stopped, nothing is wrong
        sys.stderr.close()
        return 0
    except (QuarkError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.output:
        print(f"scored {count} responses on {len(matrix.names)} dimensions -> {args.output}", file=sys.stderr)
    if matrix.judges():
        stats = matrix.judge_stats()
        where = "; ".join(j.describe() for j in matrix.judges().values())
        print(
            f"{where}: {stats['requests']} requests sent, {stats['cache_hits']} cache hits, "
            f"{stats['cache_misses']} cache misses, {stats['failures']} failed replies",
            file=sys.stderr,
        )
    failed = {name: g.total_failures for name, g in matrix.guards.items() if g.total_failures}
    if failed:  # samples whose scorer failed (e.g. a judge reply that does not parse): null in the output
        listed = ", ".join(f"{name} {n}/{matrix.guards[name].total_samples}" for name, n in failed.items())
        print(f"failed samples per dimension (scores null, findings say why): {listed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
