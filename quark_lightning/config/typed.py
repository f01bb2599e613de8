"""Settings groups as typed dataclasses: one declaration per key, one mechanism that checks them.

Each field of a settings dataclass declares what it accepts in its metadata (`rule`); `typed` builds the
dataclass from a config group, refusing unknown keys (with the nearest valid name) and every value that
breaks its rule, all at once, in the house's error style:

    algorithm.beta: got -0.1, expected a number >= 0. Fix: pass algorithm.beta=<a number >= 0>.

The same rules run when the dataclass is built directly (`check`, from `__post_init__`) and when the
composed config is validated before anything heavy starts (`value_problems`, from config/validate.py), so
a key's type and range are written once. A rule that depends on another key (e.g. `delta` > 1 +
`epsilon_high`) stays a method of its dataclass and is reported the same way. Groups not typed yet are
checked key by key with `require`, which gives the same message.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from quark_lightning.infra.errors import ConfigError

Check = Callable[[Any], bool]
T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    ok: Check
    expected: str  # what the key accepts, in words: "an integer >= 1"
    fix: str = ""  # how to fix a wrong value; default: "pass <key>=<expected>."


def rule(ok: Check, expected: str, fix: str = "") -> dict[str, Rule]:
    """A field's metadata: `field(default=..., metadata=rule(integer(1), "an integer >= 1"))`."""
    return {"rule": Rule(ok, expected, fix)}


def setting(default: Any, ok: Check, expected: str, fix: str = "") -> Any:
    """A dataclass field with its default and its rule: `steps: int = setting(1, integer(1), "an integer >= 1")`."""
    return field(default=default, metadata=rule(ok, expected, fix))


def required(ok: Check, expected: str, fix: str = "") -> Any:
    """A dataclass field without a default: a group that lacks the key is refused (`typed_problems`)."""
    return field(metadata=rule(ok, expected, fix))


def subgroup(cls: type) -> Any:
    """A field that is a nested settings group (`lora: LoraSettings = subgroup(LoraSettings)`): its keys are
    checked by `cls`'s own rules, under the dotted name (`reward_model.lora.r`)."""
    return field(default_factory=cls, metadata={"group": cls})


# ------------------------------------------------------------------ predicates
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def boolean(value: Any) -> bool:
    return isinstance(value, bool)


def integer(low: int | None = None) -> Check:
    return lambda v: is_int(v) and (low is None or v >= low)


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Check:
    """A finite real number in the interval [low, high] (bounds None: unbounded; `*_open`: the bound excluded)."""

    def ok(v: Any) -> bool:
        if not is_num(v) or not math.isfinite(v):
            return False
        above = low is None or (v > low if low_open else v >= low)
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return ok


def one_of(options: Iterable[Any]) -> Check:
    allowed = tuple(options)
    return lambda v: v in allowed


def optional(check: Check) -> Check:
    """None, or a value `check` accepts."""
    return lambda v: v is None or check(v)


# ------------------------------------------------------------------ the mechanism
def dotted(where: str, key: str) -> str:
    """The key's full name: `where.key`, or `key` for a config's top-level keys (`where` empty)."""
    return f"{where}.{key}" if where else key


def problem(key: str, value: Any, expected: str, fix: str = "") -> str:
    """The house's message for a wrong value: `<key>: got X, expected Y. Fix: ...`."""
    return f"{key}: got {value!r}, expected {expected}. Fix: {fix or f'pass {key}=<{expected}>.'}"


def require(problems: list[str], cfg: Any, key: str, ok: Check, expected: str, fix: str = "") -> None:
    """The same check for one dotted key of a composed config (a DictConfig) that no dataclass declares yet:
    appends the problem when `ok(value)` is false (a missing key reads as None)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, throw_on_missing=False, default=None)
    try:
        good = bool(ok(value))
    except (TypeError, ValueError):
        good = False
    if not good:
        problems.append(problem(key, value, expected, fix))


def value_problems(cls: type, values: Mapping[str, Any] | object, where: str) -> list[str]:
    """Every declared key of `cls` (nested groups included) whose value breaks its rule. `values` is a mapping
    (a config group: keys it lacks are skipped, their defaults apply) or an instance of `cls`."""
    problems = []
    for f in fields(cls):
        if isinstance(values, Mapping):
            if f.name not in values:
                continue
            value = values.get(f.name)
        else:
            value = getattr(values, f.name)
        group = f.metadata.get("group")
        if group is not None:
            if isinstance(value, (Mapping, group)):
                problems += value_problems(group, value, dotted(where, f.name))
            else:
                problems.append(problem(dotted(where, f.name), value, "a group of settings (a mapping)"))
            continue
        r = f.metadata.get("rule")
        if r is None:
            continue
        try:
            good = bool(r.ok(value))
        except (TypeError, ValueError):
            good = False
        if not good:
            problems.append(problem(dotted(where, f.name), value, r.expected, r.fix))
    return problems


HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def unknown_keys(keys: Iterable[str], allowed: Iterable[str], where: str, fix: str = "") -> list[str]:
    """One problem per key of `keys` not in `allowed` (Hydra's own keys pass), with the closest allowed key
    as the suggestion."""
    allowed = sorted(set(allowed))
    problems = []
    for key in keys:
        if key in allowed or key in HYDRA_KEYS:
            continue
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        options = ", ".join(allowed)
        problems.append(f"{dotted(where, key)}: unknown key; {hint}Fix: remove it or use one of {options}{fix}")
    return problems


def raise_problems(problems: list[str], where: str) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"invalid {(where + ' ') if where else ''}settings:\n  - " + "\n  - ".join(problems))


def check(instance: object, where: str, extra: Iterable[str] = ()) -> None:
    """From `__post_init__`: refuse the instance if a field breaks its rule (or `extra` lists a problem)."""
    raise_problems(value_problems(type(instance), instance, where) + list(extra), where)


def typed_problems(cls: type, mapping: Mapping[str, Any], where: str, allowed: Iterable[str] = ()) -> list[str]:
    """What `typed` would refuse: unknown keys (nested groups included; `allowed`: keys the group may hold
    that `cls` does not take) and wrong values."""
    names = [f.name for f in fields(cls)]
    problems = unknown_keys(list(mapping), [*names, *allowed], where)
    for f in fields(cls):
        if f.name not in mapping and f.default is MISSING and f.default_factory is MISSING:
            r = f.metadata.get("rule")
            expected = r.expected if r else "a value"
            key = dotted(where, f.name)
            problems.append(f"{key}: required but not set. Fix: pass {key}=<{expected}>.")
        group, value = f.metadata.get("group"), mapping.get(f.name)
        if group is not None and isinstance(value, Mapping):
            problems += unknown_keys(list(value), [g.name for g in fields(group)], dotted(where, f.name))
    return problems + value_problems(cls, mapping, where)


def typed(cls: type[T], mapping: Mapping[str, Any], where: str, allowed: Iterable[str] = ()) -> T:
    """`cls` built from a config group, after refusing its unknown keys and wrong values, all at once."""
    raise_problems(typed_problems(cls, mapping, where, allowed), where)
    return _build(cls, mapping)


def _build(cls: type[T], mapping: Mapping[str, Any]) -> T:
    kwargs = {}
    for f in fields(cls):
        if f.name in mapping:
            group, value = f.metadata.get("group"), mapping[f.name]
            kwargs[f.name] = _build(group, value) if group is not None and value is not None else value
    return cls(**kwargs)
