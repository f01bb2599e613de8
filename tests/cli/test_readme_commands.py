"""Every `python train.py ...` / `python evaluate.py ...` command in README.md and docs/*.md composes.

The commands are read from fenced code blocks (backslash line continuations joined) and from inline code
spans (which may wrap across lines), split into shell commands at `&&`, `||`, `;`, `|` and `&` (so
`... | tee log`, `... &` and `pip install ... && python train.py ...` work), with comments (`# ...`),
redirections (`> log`, `2>&1`), leading `VAR=value` assignments and wrappers (`nohup`, `env`, `time`,
`srun`) removed, and the rest split with `shlex` as the shell would. Recognized entry points: `python
train.py`, `python evaluate.py`, `python -m quark_lightning.cli.train|evaluate`, `torchrun [--opt=val ...]
train.py`, and, in inline code only, a bare `evaluate.py key=value ...`.

Each command is composed in-process with Hydra's compose API on `conf/`. That is what `--cfg job` does
(Hydra's `show_cfg` composes in run mode and prints `OmegaConf.to_yaml` of the job config): it rejects
the same things, an override that does not parse, an unknown config group option, a key that does not
exist without `+`, a sweep without `--multirun`. `test_cli_cfg_job_agrees_with_compose` checks that on a
few documented commands (the printed YAML equals the composed config) and on known-bad overrides (both
fail). A `--multirun` command is composed once per job of its sweep, as Hydra's basic sweeper splits it.

Placeholders (`<judge>`, `<date>`) are replaced from SUBSTITUTIONS before composing; a placeholder that is
not in the table fails the test, so the table stays explicit. EXCLUDED lists commands left out on purpose.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = os.path.join(REPO, "conf")

# Placeholders of the docs -> a dummy value that composes like a real one. Applied to the command text
# before shell splitting (in a shell, `<judge>` would be a redirection).
SUBSTITUTIONS: dict[str, str] = {
    "<judge>": "/models/judge",  # a judge model directory / served model name
    "<date>": "2025-01-01",  # outputs/<date>/<time>/policy, a run directory
    "<time>": "12-00-00",
    "${SLURM_JOB_ID}": "12345",  # set by SLURM in the sbatch example
}
# Whole arguments that stand for "your overrides here": dropped.
DROPPED_ARGS: dict[str, str] = {
    "...": "`python -m quark_lightning.cli.evaluate ...`: any overrides",
}
# (file relative to the repository, a substring of the command as written, why it is not composed).
EXCLUDED: list[tuple[str, str, str]] = []

ENTRY_SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate"}
ENTRY_MODULES = {"quark_lightning.cli.train": "train", "quark_lightning.cli.evaluate": "evaluate"}
WRAPPERS = {"nohup", "env", "time", "exec", "command", "srun"}
PYTHON_RE = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")
ENV_ASSIGN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
REDIRECT_RE = re.compile(r"^\d*(?:>>?|<|&>>?|>&|<&)")
PLACEHOLDER_RE = re.compile(r"<[A-Za-z][^<>\n]*>|\$[A-Za-z_]\w*|\$\{[A-Za-z_]\w*\}")  # not ${oc.env:X}
FENCE_RE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)")
INLINE_RE = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh", "text"}


@dataclass
class Command:
    path: str  # relative to the repository
    line: int
    text: str  # as written (continuations joined)
    config_name: str = ""  # train | evaluate
    argv: list[str] = field(default_factory=list)  # the arguments after the entry point, substituted
    error: str = ""  # why it could not be read

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files() -> list[str]:
    return [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def shell_segments(line: str) -> list[str]:
    """`line` cut at unquoted `&&`, `||`, `;`, `|`, `|&`, `&` (not `>&`/`&>`), up to an unquoted comment."""
    segments, buf, quote, i = [], [], None, 0
    while i < len(line):
        c = line[i]
        if quote:
            buf.append(c)
            if c == "\\" and quote == '"' and i + 1 < len(line):
                buf.append(line[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c == "\\":
            buf.append(line[i : i + 2])
            i += 1
        elif c in "'\"":
            quote = c
            buf.append(c)
        elif c == "#" and (i == 0 or line[i - 1] in " \t;&|"):
            break
        elif c in ";|&":
            prev, nxt = line[i - 1] if i else "", line[i + 1] if i + 1 < len(line) else ""
            if c == "&" and (prev in "<>" or nxt == ">"):
                buf.append(c)  # a redirection: 2>&1, &>log
            else:
                segments.append("".join(buf))
                buf = []
                if nxt == c or (c == "|" and nxt == "&"):
                    i += 1
        else:
            buf.append(c)
        i += 1
    segments.append("".join(buf))
    return [s for s in (s.strip() for s in segments) if s]


def _strip_redirections(tokens: list[str]) -> list[str]:
    out, skip = [], False
    for tok in tokens:
        if skip:
            skip = False
            continue
        m = REDIRECT_RE.match(tok)
        if m:
            skip = m.end() == len(tok)  # `>` `2>` `&>`: the target is the next token
            continue
        out.append(tok)
    return out


def parse_segment(tokens: list[str], inline: bool) -> tuple[str, list[str]] | None:
    """(config name, arguments) when the tokens run an entry point, else None."""
    i, n = 0, len(tokens)
    while i < n and (ENV_ASSIGN_RE.match(tokens[i]) or tokens[i] in WRAPPERS):
        wrapper = tokens[i] in WRAPPERS
        i += 1
        while wrapper and i < n and tokens[i].startswith("-"):
            i += 1  # srun -N2 ..., env -i ...
    if i >= n:
        return None
    head = tokens[i]
    if PYTHON_RE.match(head):
        i += 1
        while i < n and tokens[i].startswith("-") and tokens[i] != "-m":
            i += 1  # python -u, -O, ...
        if i + 1 < n and tokens[i] == "-m":
            name = ENTRY_MODULES.get(tokens[i + 1])
            return (name, tokens[i + 2 :]) if name else None
    elif os.path.basename(head) == "torchrun":
        i += 1
        while i < n and tokens[i].startswith("-"):
            i += 1  # torchrun --nnodes=2 ...
    elif not (inline and i == 0 and i + 1 < n):
        return None  # a bare `train.py`/`evaluate.py` with arguments counts in inline code only
    if i < n and os.path.basename(tokens[i]) in ENTRY_SCRIPTS:
        return ENTRY_SCRIPTS[os.path.basename(tokens[i])], tokens[i + 1 :]
    return None


def commands_in_text(path: str, line: int, text: str, inline: bool) -> list[Command]:
    found = []
    for segment in shell_segments(text):
        if not any(name in segment for name in (*ENTRY_SCRIPTS, *ENTRY_MODULES)):
            continue
        substituted = segment
        for placeholder, value in SUBSTITUTIONS.items():
            substituted = substituted.replace(placeholder, value)
        try:
            tokens = shlex.split(substituted, comments=False)
        except ValueError as err:  # an error only where it reads as a command (not `evaluate.py's wiring`)
            if parse_segment(substituted.split(), inline):
                found.append(Command(path, line, segment, error=f"shlex could not split it: {err}"))
            continue
        parsed = parse_segment(_strip_redirections(tokens), inline)
        if parsed is None:
            continue
        cmd = Command(path, line, segment, parsed[0], [a for a in parsed[1] if a not in DROPPED_ARGS])
        left = PLACEHOLDER_RE.search(substituted)
        if left:
            cmd.error = f"placeholder {left.group(0)!r} is not in SUBSTITUTIONS of {__file__}"
        found.append(cmd)
    return found


def extract_commands(abspath: str) -> list[Command]:
    """Every entry-point command of one Markdown file, fenced blocks first, then inline code."""
    path = os.path.relpath(abspath, REPO)
    with open(abspath, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    found: list[Command] = []
    prose = list(lines)  # fenced lines blanked, so inline spans neither see nor cross them
    fence = None  # (char, length, scan) while inside a fenced block
    pending, start = "", 0  # a logical line being joined from continuations
    for number, raw in enumerate(lines, start=1):
        m = FENCE_RE.match(raw)
        if fence is None:
            if m:
                fence = (m.group(2)[0], len(m.group(2)), m.group(3).lower() in SHELL_LANGS)
                prose[number - 1] = ""
            continue
        prose[number - 1] = ""
        if m and m.group(2)[0] == fence[0] and len(m.group(2)) >= fence[1] and not m.group(3):
            if pending:
                found += commands_in_text(path, start, pending, inline=False)
            fence, pending = None, ""
            continue
        if not fence[2]:
            continue
        if not pending:
            start = number
            raw = re.sub(r"^\s*\$\s+", "", raw)  # a console prompt
        trailing = len(raw) - len(raw.rstrip("\\"))
        if trailing % 2:  # an odd number of trailing backslashes: the line continues
            pending += raw[:-1]
            continue
        found += commands_in_text(path, start, pending + raw, inline=False)
        pending = ""
    text = "\n".join(prose)
    for m in INLINE_RE.finditer(text):
        number = text.count("\n", 0, m.start()) + 1
        found += commands_in_text(path, number, m.group(2).replace("\n", " "), inline=True)
    return sorted(found, key=lambda c: c.line)


def _excluded(cmd: Command) -> str | None:
    for path, contains, reason in EXCLUDED:
        if cmd.path == path and contains in cmd.text:
            return reason
    return None


def all_commands() -> list[Command]:
    return [c for f in doc_files() for c in extract_commands(f)]


COMMANDS = all_commands()


def _ids(commands: list[Command]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for c in commands:
        seen[c.where] = seen.get(c.where, 0) + 1
        ids.append(c.where if seen[c.where] == 1 else f"{c.where}#{seen[c.where]}")
    return ids


HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}


def jobs(cmd: Command) -> list[list[str]]:
    """The override lists Hydra composes for this command: one, or one per job of a --multirun sweep."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides, multirun, args = [], False, iter(cmd.argv)
    for arg in args:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in HYDRA_FLAGS_WITH_VALUE:
            next(args, None)  # --cfg job: what this test checks anyway
        elif arg.split("=", 1)[0] in HYDRA_FLAGS_WITH_VALUE or arg == "--resolve":
            pass
        elif arg.startswith("-"):
            raise ValueError(
                f"unsupported command-line flag {arg!r} (handle it in jobs() or add to EXCLUDED)"
            )
        else:
            overrides.append(arg)
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.fixture()
def hydra_conf():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield


def _compose(config_name: str, overrides: list[str]):
    from hydra import compose

    return compose(config_name=config_name, overrides=overrides)


@pytest.mark.parametrize("cmd", COMMANDS, ids=_ids(COMMANDS))
def test_documented_command_composes(cmd: Command, hydra_conf):
    reason = _excluded(cmd)
    if reason:
        pytest.skip(f"excluded: {reason}")
    where = f"{cmd.where}: `{cmd.text}`"
    if cmd.error:
        pytest.fail(f"{where}: {cmd.error}", pytrace=False)
    problem = ""
    try:
        job_list = jobs(cmd)
    except Exception as err:  # a flag we do not handle, a sweep that does not parse
        job_list, problem = [], f"{where}: {type(err).__name__}: {err}"
    for overrides in job_list:
        try:
            _compose(cmd.config_name, overrides)
        except Exception as err:
            job = f" (multirun job {overrides})" if len(job_list) > 1 else ""
            problem = (
                f"{where}{job} does not compose with conf/{cmd.config_name}.yaml "
                f"(what `--cfg job` would print):\n{type(err).__name__}: {err}"
            )
            break
    if problem:  # outside `except`: the message alone, without Hydra's chained tracebacks
        pytest.fail(problem, pytrace=False)


def test_commands_are_found():
    """The extractor finds the README's commands of both entry points, and EXCLUDED is not stale."""
    readme = [c for c in COMMANDS if c.path == "README.md"]
    assert {c.config_name for c in readme} == {"train", "evaluate"}, readme
    assert len(set(_ids(COMMANDS))) == len(COMMANDS)
    for path, contains, _ in EXCLUDED:
        assert any(c.path == path and contains in c.text for c in COMMANDS), (
            f"EXCLUDED entry ({path!r}, {contains!r}) matches no documented command: remove it"
        )


def test_extractor_reads_shell_syntax(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Run `HF_HUB_OFFLINE=1 python train.py\n+experiment=demo --cfg job` or `evaluate.py limit=3`;\n"
        "`evaluate.py` alone and `train.py` are mentions.\n\n"
        "```bash\n"
        "pip install -e '.[dev]' && HF_HUB_OFFLINE=1 nohup python train.py seed=1 \\\n"
        "  model=tiny > log.txt 2>&1 &   # comment\n"
        'python evaluate.py models="{base: /m/base, rl: outputs/<date>/<time>/policy}" | tee out.log\n'
        "torchrun --nnodes=2 --node_rank=0 \\\n  train.py trainer=multinode\n"
        "python -m quark_lightning.cli.evaluate ...\n"
        "python train.py judge.model=<nope>\n"
        "```\n\n"
        "```\ntrain.py   thin entry (= python -m quark_lightning.cli.train)\n```\n"
        "```python\nos.system('python train.py seed=3')\n```\n"
    )
    got = [(c.line, c.config_name, c.argv, bool(c.error)) for c in extract_commands(str(doc))]
    assert got == [
        (1, "train", ["+experiment=demo", "--cfg", "job"], False),
        (2, "evaluate", ["limit=3"], False),
        (6, "train", ["seed=1", "model=tiny"], False),
        (8, "evaluate", ["models={base: /m/base, rl: outputs/2025-01-01/12-00-00/policy}"], False),
        (9, "train", ["trainer=multinode"], False),
        (11, "evaluate", [], False),
        (12, "train", ["judge.model=<nope>"], True),
    ]
    multirun = Command("x.md", 1, "", "train", ["--multirun", "optimization=sum,gdpo", "seed=0,1", "+a=b"])
    assert jobs(multirun) == [
        ["optimization=sum", "seed=0", "+a=b"],
        ["optimization=sum", "seed=1", "+a=b"],
        ["optimization=gdpo", "seed=0", "+a=b"],
        ["optimization=gdpo", "seed=1", "+a=b"],
    ]


# Overrides that `--cfg job` rejects: compose must reject each too.
BAD_OVERRIDES = [
    ("train", ["trainer.max_steps=[1"]),  # override grammar
    ("train", ["trainer=nope"]),  # unknown config group option
    ("train", ["trainer.max_stepz=3"]),  # a key that does not exist, without +
    ("train", ["experiment=demo"]),  # a group not in the defaults list, without +
    ("train", ["seed=0,1"]),  # a sweep without --multirun
    ("evaluate", ["healthbench.matcher=llm"]),
]


def _cli_samples() -> list[tuple[str, list[str]]]:
    """Three documented commands through the real CLI: train, evaluate, one multirun job (when present)."""
    usable = [c for c in COMMANDS if not c.error and not _excluded(c)]
    picks = []
    for want in (
        lambda c: c.config_name == "train" and any(a.startswith("hydra.") for a in c.argv),
        lambda c: c.config_name == "evaluate" and len(c.argv) > 1,
        lambda c: "--multirun" in c.argv or "-m" in c.argv,
    ):
        cmd = next((c for c in usable if want(c)), None)
        if cmd is not None:
            picks.append((cmd.config_name, jobs(cmd)[-1]))
    return picks


def test_cli_cfg_job_agrees_with_compose(hydra_conf, tmp_path):
    from omegaconf import OmegaConf

    samples = _cli_samples()
    assert len(samples) >= 2, samples
    cases = [(name, ov, True) for name, ov in samples] + [(name, ov, False) for name, ov in BAD_OVERRIDES]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(REPO, f"{name}.py"), *overrides, "--cfg", "job"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, overrides, _ in cases
    ]
    for (name, overrides, good), proc in zip(cases, procs):
        out, err = proc.communicate(timeout=120)
        shown = f"python {name}.py {shlex.join(overrides)} --cfg job"
        if good:
            assert proc.returncode == 0, f"{shown} exited {proc.returncode}:\n{err}"
            assert out == OmegaConf.to_yaml(_compose(name, overrides)), f"{shown}: printed config differs"
        else:
            assert proc.returncode != 0, f"{shown} was accepted by the CLI"
            with pytest.raises(Exception) as caught:
                _compose(name, overrides)
            first = str(caught.value).splitlines()[0]
            assert first in err, f"{shown}: compose said {first!r}, the CLI said:\n{err}"
    assert not list(tmp_path.iterdir()), "--cfg job wrote files"
