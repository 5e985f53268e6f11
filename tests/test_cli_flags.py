"""Every flag of every command line, read from its parser: a bad value is refused where it is
parsed, in one line naming the flag and the value (exit status 2), before any work starts.

The flags are enumerated from the parsers (``parser._actions``, sub-commands included), so a new
flag is tried as soon as it exists. A flag that takes a value must declare what it accepts:
``choices``, or a type from ``utils/cli.py`` (``number``, ``existing``, ``output``, ...) or one
marked with ``utils.cli.declare`` (whose own bad values are tried); otherwise it must be listed
below in FREE, with the reason it takes any text. A flag in neither fails
``test_every_flag_declares_its_check``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# --- the command lines -----------------------------------------------------------------------
class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


def captured(main: Callable, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser a ``main`` builds inline (files without a ``build_parser``): its
    ``parse_args`` is stopped before anything runs."""
    real = argparse.ArgumentParser.parse_args

    def grab(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = grab
    try:
        main(argv or [])
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_args = real
    raise AssertionError(f"{main} did not parse its arguments")


def _predict():
    import predict

    return predict.build_parser()


def _evaluate():
    import evaluate

    return evaluate.build_parser()


def _export():
    import export

    return export.build_parser()


def _demo():
    import demo

    return demo.build_parser()


def _train():
    from utils.train_args import build_parser

    return build_parser()


def _module(name: str) -> Callable[[], argparse.ArgumentParser]:
    def build():
        import importlib

        return importlib.import_module(name).build_parser()

    return build


def _inline(name: str, argv: list[str] | None = None) -> Callable[[], argparse.ArgumentParser]:
    def build():
        import importlib

        return captured(importlib.import_module(name).main, argv)

    return build


@dataclass(frozen=True)
class Cli:
    """One command line: its file, how to get its parser, the sub-command (if any) and the
    argv its required flags need (``<file>``, ``<dir>`` and ``<new-file>`` are replaced by
    real paths)."""

    file: str
    parser: Callable[[], argparse.ArgumentParser]
    sub: str | None = None
    required: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.file} {self.sub}" if self.sub else self.file


_C1K = ("--fg-dir", "<dir>", "--alpha-dir", "<dir>", "--bg-dir", "<dir>", "--fg-names", "<file>",
        "--bg-names", "<file>", "--trimap-dir", "<dir>", "--out", "<new-dir>")  # fmt: skip

CLIS = [
    Cli("predict.py", _predict, required=("--image", "<file>", "--trimap", "<file>")),
    Cli("evaluate.py", _evaluate),
    Cli("export.py", _export, required=("--out", "<new-file>")),
    Cli("demo.py", _demo),
    Cli("train_encoder_decoder.py", _train, required=("--stage", "1")),
    Cli("benchmarks/__main__.py", _module("benchmarks.__main__")),
    Cli("benchmarks/bench_calibration.py", _module("benchmarks.bench_calibration")),
    Cli("benchmarks/bench_data.py", _module("benchmarks.bench_data")),
    Cli("benchmarks/bench_export.py", _module("benchmarks.bench_export")),
    Cli("benchmarks/bench_infer.py", _module("benchmarks.bench_infer")),
    Cli("benchmarks/bench_metrics.py", _module("benchmarks.bench_metrics")),
    Cli("benchmarks/bench_train.py", _module("benchmarks.bench_train")),
    Cli("benchmarks/bench_page.py", _module("benchmarks.bench_page")),
    Cli(
        "benchmarks/compare_commits.py",
        _module("benchmarks.compare_commits"),
        required=("--base", "HEAD"),
    ),
    Cli(
        "benchmarks/bench_recipes.py",
        _inline("benchmarks.bench_recipes"),
        required=("--recipe", "main"),
    ),
    Cli(
        "benchmarks/bench_adapt.py",
        _inline("benchmarks.bench_adapt"),
        required=("--ckpt", "<file>"),
    ),
    Cli("data/synthetic.py", _inline("data.synthetic")),
    Cli("data/testsets.py", _module("data.testsets"), sub="composition1k", required=_C1K),
    Cli("data/py_adobe_data.py", _module("data.py_adobe_data")),
    *(
        Cli("utils/visdom_frontend.py", _module("utils.visdom_frontend"), sub=s)
        for s in ("install", "fetch", "status", "serve")
    ),
]

# Files with an argparse parser that are not a command line of their own.
NOT_CLIS = {
    "utils/cli.py": "the shared parser and argument types",
    "utils/train_args.py": "train_encoder_decoder.py's parser",
    "benchmarks/gpu_check.py": "adds its flags to python -m benchmarks",
}

# Flags checked by the program's main() before any work (after flag combinations that must
# be reported first): the bad values tried through main, which must return 2 with one line
# naming the flag and the value.
RUNTIME = {
    ("predict.py", "--onnx"): ("predict", ["<missing>", "<dir>"]),
}

# Flags that take any text, and why (the value is checked where it is used, in one line).
_TRAINER_PATH = "a path the trainer reads before its data set-up (utils/starting_point.py, " \
    "data/sources.py), one line and exit 2: tests/test_train.py"  # fmt: skip
FREE = {
    ("evaluate.py", "--trimap-set"): "a folder name inside an alphamatting.com set, checked "
    "when the set is opened",
    ("evaluate.py", "--visdom-server"): "a URL; an unreachable server falls back to files",
    ("train_encoder_decoder.py", "--data-root"): _TRAINER_PATH,
    ("train_encoder_decoder.py", "--bg-dir"): _TRAINER_PATH,
    ("train_encoder_decoder.py", "--val-dir"): _TRAINER_PATH,
    ("train_encoder_decoder.py", "--real-val"): _TRAINER_PATH,
    ("train_encoder_decoder.py", "--cache-dir"): "a folder the decoded cache is written to",
    ("train_encoder_decoder.py", "--photo-dir"): "a folder, 'auto' or 'none': "
    "test_bad_photo_dir_is_a_clean_error",
    ("train_encoder_decoder.py", "--vgg-weights"): _TRAINER_PATH,
    ("train_encoder_decoder.py", "--init"): _TRAINER_PATH,
    ("train_encoder_decoder.py", "--resume"): "'auto' or a last.pt: " + _TRAINER_PATH,
    ("train_encoder_decoder.py", "--runs-dir"): "checked by resolve_config: "
    "test_runs_dir_that_is_a_file_is_one_line",
    ("train_encoder_decoder.py", "--run-name"): "one folder name, checked by resolve_config: "
    "test_run_names_stay_inside_the_runs_dir",
    ("train_encoder_decoder.py", "--real-val-trimap"): "a folder name inside an "
    "alphamatting.com set",
    ("train_encoder_decoder.py", "--visdom-server"): "a URL",
    ("benchmarks/__main__.py", "--note"): "free text stored in the JSON",
    ("benchmarks/__main__.py", "--tests-filter"): "a pytest -k expression",
    ("benchmarks/compare_commits.py", "--base"): "a git revision, resolved by git (one line: "
    "test_compare_commits_reads_steady_time_and_refuses_bad_input)",
    ("benchmarks/compare_commits.py", "--head"): "a git revision, resolved by git",
    ("data/py_adobe_data.py", "--visdom-server"): "a URL",
    ("benchmarks/bench_page.py", "--server-args"): "demo.py flags, checked by demo.py's own "
    "parser in main() before the server starts",
    ("benchmarks/bench_recipes.py", "extra"): "trainer flags, checked by the trainer's own "
    "parser in main() before any stage runs (one line, exit 2)",
}


# --- bad values per declared kind ------------------------------------------------------------
def _number_bad(t) -> list[str]:
    low, high, strict = t.low, t.high, t.strict
    bad = ["x"]
    if t.flag_kind == "int":
        bad += ["1.5", str(low if strict else low - 1)]
        bad += [str(high + 1)] if high is not None else []
    else:
        bad += ["nan", "inf", repr(float(low)) if strict else repr(float(low) - 1)]
        bad += [repr(float(high) * 2 + 1)] if high is not None else []
    return bad


KINDS: dict[str, Callable] = {
    "int": _number_bad,
    "float": _number_bad,
    "int-list": lambda t: ["0,96", "64,x"],
    "scale": lambda t: ["0", "1.5", "nan", "x"],
    "device": lambda t: ["gpu", "cuda:x"],
    "host": lambda t: ["999.1.1.1", "bad host!", "-x.example"],
    "name-list": lambda t: ["bogus", ","],
    "input-file": lambda t: ["<missing>", "<dir>"],
    "input-dir": lambda t: ["<missing>", "<file>"],
    "input-any": lambda t: ["<missing>"],
    "output-file": lambda t: ["<dir>", "<under-file>"],
    "output-dir": lambda t: ["<file>", "<under-file>"],
}


def flag_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def value_actions(parser: argparse.ArgumentParser, sub: str | None) -> list[argparse.Action]:
    """The actions of ``parser`` (or of its sub-command ``sub``) that take a value."""
    if sub is not None:
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subs.choices[sub]
    return [
        a for a in parser._actions if a.nargs != 0 and not isinstance(a, argparse._SubParsersAction)
    ]


def bad_values(action: argparse.Action, key: tuple[str, str]) -> list[str] | None:
    """What to try on ``action``: from its choices or its declared kind; None: undeclared."""
    if key in RUNTIME:
        return RUNTIME[key][1]
    t = action.type
    if action.choices is not None and not hasattr(t, "flag_kind"):
        return ["bogus"] if t in (None, str) else ["-7"]
    kind = getattr(t, "flag_kind", None)
    if kind is None:
        return None
    if kind in KINDS:
        return KINDS[kind](t)
    assert t.bad_values, f"{t} declares the kind {kind!r} but no bad values"
    return list(t.bad_values)


def _cases():
    """(cli, flag, bad values or None) for every flag that takes a value, every CLI."""
    out = []
    for cli in CLIS:
        for action in value_actions(cli.parser(), cli.sub):
            flag = flag_name(action)
            out.append((cli, flag, bad_values(action, (cli.file, flag))))
    return out


CASES = _cases()


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    """What the ``<...>`` markers stand for."""
    import numpy as np

    from utils.image_io import write_png

    (tmp_path / "dir").mkdir()
    write_png(tmp_path / "file.png", np.zeros((4, 4), np.uint8))
    return {
        "<file>": str(tmp_path / "file.png"),
        "<dir>": str(tmp_path / "dir"),
        "<missing>": str(tmp_path / "missing"),
        "<under-file>": str(tmp_path / "file.png" / "out"),
        "<new-file>": str(tmp_path / "new" / "model.onnx"),
        "<new-dir>": str(tmp_path / "new-dir"),
    }


def parse(cli: Cli, argv: list[str]) -> None:
    parser = cli.parser()
    parser.parse_args(([cli.sub] if cli.sub else []) + argv)


def with_value(required: list[str], flag: str, value: str) -> list[str]:
    """argv giving ``flag`` the ``value`` (``--flag=value``: a value may start with '-')."""
    return [*required, f"{flag}={value}"] if flag.startswith("-") else [*required, "--", value]


# --- the tests -------------------------------------------------------------------------------
PARSES = re.compile(r"\b(ArgumentParser|OneLineParser)\(|\.add_argument\(|\bparse_args\(")


def test_every_command_line_is_in_the_table():
    """Any file that builds a parser is a CLI here (or says why it is not one)."""
    found = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv/", "tests/", ".")) or "/." in rel:
            continue
        if PARSES.search(path.read_text(encoding="utf-8")):
            found.add(rel)
    listed = {cli.file for cli in CLIS} | set(NOT_CLIS)
    assert found - listed == set(), "add these command lines to CLIS"
    assert listed - found == set(), "these are no longer command lines"


@pytest.mark.parametrize(("cli", "flag", "bad"), CASES, ids=[f"{c.name}:{f}" for c, f, _ in CASES])
def test_every_flag_declares_its_check(cli, flag, bad):
    key = (cli.file, flag)
    listed = ["FREE"] if key in FREE else []
    if bad is None:
        assert listed, (
            f"{cli.name} {flag} takes any value: give it a type from utils/cli.py (number, "
            "existing, output, ...) or choices, or list it in FREE with the reason"
        )
    else:
        assert not listed, f"{cli.name} {flag} is checked now: remove it from {listed[0]}"


@pytest.mark.parametrize(
    ("cli", "flag", "bad"),
    [case for case in CASES if case[2] is not None],
    ids=[f"{c.name}:{f}" for c, f, b in CASES if b is not None],
)
def test_bad_values_are_one_line_naming_the_flag(cli, flag, bad, paths, capsys):
    required = [paths.get(a, a) for a in cli.required]
    for value in bad:
        value = paths.get(value, value)
        argv = with_value(required, flag, value)
        if (cli.file, flag) in RUNTIME:
            import importlib

            main = importlib.import_module(RUNTIME[(cli.file, flag)][0]).main
            assert main(argv) == 2, (flag, value)
        else:
            with pytest.raises(SystemExit) as e:
                parse(cli, argv)
            assert e.value.code == 2, (flag, value)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, (flag, value, err)
        assert flag in err[-1] and value in err[-1], (flag, value, err[-1])


def test_the_good_defaults_and_the_required_flags_parse(paths):
    """The table's required argv is accepted (so the bad-value test fails on the bad value)."""
    for cli in CLIS:
        parse(cli, [paths.get(a, a) for a in cli.required])


def test_host_of_another_machine_is_one_line_before_the_page_starts(capsys):
    """A syntactically valid --host this machine cannot listen on (TEST-NET-1 address) is
    refused in main before the model loads or Gradio starts."""
    import demo

    assert demo.main(["--host", "192.0.2.1", "--port", "7860"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--host 192.0.2.1" in err[0], err
