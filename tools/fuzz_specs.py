"""Mutate every spec in ``specs/`` and run each mutant through the CLI's code path.

A mutant passes when ``surgery plan`` (and, for a sample, ``surgery apply``) ends with
exit 0, or with exit 2 and one error line that carries the mutant's ``file:line:col``.
Anything else (a traceback, an error without a location) is a crash and is printed.

    python tools/fuzz_specs.py                 # 40 mutants per spec, seed 0
    python tools/fuzz_specs.py -n 500 --seed 3 --apply-every 10 --keep crashes/

Mutants are written to a temporary folder only (never into ``specs/``); it mirrors the
repository's folders with symlinks so that the specs' relative paths still resolve.
``tests/test_fuzz_specs.py`` runs a small, seeded number of them in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = "fuzz-out"  # inside the temporary folder: where applied mutants write
SPEC_SUFFIXES = (".prototxt", ".yaml", ".yml", ".json")

_NUMBER = re.compile(r"(?<![\w.\"'])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
_QUOTED = re.compile(r'"[^"\n]*"')
_WORD = re.compile(r"[A-Za-z_][\w.*/]*")
_NUMBERS = [
    "0",
    "-1",
    "-7",
    "1099511627776",
    "4294967297",
    "9223372036854775808",
    "1e308",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "2",
    "3",
    "65537",
    "100000",
    "1e-30",
]
_GARBAGE = [
    "{",
    "}",
    "[",
    "]",
    ":",
    '"',
    "'",
    "#",
    "{ }",
    "edit { }",
    "edit:",
    "- null",
    "- 3",
    "&a [*a]",
    "layer { }",
    'name: "x"',
    "\x00",
    "\t\t",
    "{{{{",
    "]]]]",
    ": :",
    "\\",
    "edit { lr }",
    "*",
    'edit { append { layer { type: "ReLU" } } }',
    "seed: -1",
    "- lr: {}",
    "source: null",
    "\ufeff",
    "!!python/object:os.system 'x'",
    "? a",
    "%YAML 1.1",
    "---",
    "...",
]
#: Fields a spec's messages have, with values at and past the edge of their range.
_FIELDS = [
    "kernel_size: 0",
    "stride: 0",
    "num_output: 0",
    "num_output: 1099511627",
    "pad: 100000",
    "group: 0",
    "dilation: 0",
    "dropout_ratio: 2",
    "axis: 10",
    "axis: -9",
    "std: -1",
    "min: 3",
    "max: -3",
    "mode: FIT",
    "mode: FRESH",
    "samples: 0",
    "samples: 4000000000",
    "kernel_size: 4",
    "operation: MAX",
    "propagate: SLICE",
    "propagate: ERROR",
    "lr_mult: 0",
    "lr_mult: -1",
    "decay_mult: nan",
    "local_size: 0",
    "opset: 99",
    "opset: 1",
    "ir_version: 99",
    "near_identity: true",
    "allow_zero: true",
    "bias_term: false",
    "global_pooling: true",
    'type: "Reshape"',
    'type: "Softmax"',
    'type: "Concat"',
    'type: "Eltwise"',
    'type: "Slice"',
    'type: "BatchNorm"',
    'type: "gaussian"',
    'type: "bilinear"',
    "phase: TEST",
    "keep_train_branches: true",
    "external_data: true",
    'dynamic_axis: "x:2"',
    'path: ""',
    'path: "/tmp"',
    'bottom: "data"',
    'top: "x"',
    'name: "."',
]
_ENUMS = [
    "EXACT",
    "FIT",
    "FRESH",
    "PROD",
    "SUM",
    "MAX",
    "AVE",
    "STOCHASTIC",
    "REINIT",
    "SLICE",
    "ERROR",
    "TRAIN",
    "TEST",
    "FAN_IN",
    "FAN_OUT",
    "AVERAGE",
]
_TYPES = [
    "Convolution",
    "InnerProduct",
    "Pooling",
    "ReLU",
    "Dropout",
    "Softmax",
    "Concat",
    "Eltwise",
    "Flatten",
    "Reshape",
    "BatchNorm",
    "Scale",
    "Slice",
    "LRN",
    "Deconvolution",
    "Input",
    "Power",
    "PReLU",
    "Sigmoid",
]


@dataclass
class Outcome:
    """What one run of a mutant gave."""

    code: int | None  # None: an exception escaped (a traceback)
    stderr: str
    trace: str = ""

    def clean(self, spec_file: str) -> bool:
        """Exit 0, or exit 2 with one error line located at ``spec_file:line:col`` (or at a
        file the spec names, ``file:line:col``, that also gives the spec's line)."""
        if self.code == 0:
            return True
        if self.code != 2:
            return False
        errors = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        if len(errors) != 1:
            return False
        if re.match(rf"error: {re.escape(spec_file)}:\d+:\d+: ", errors[0]):
            return True
        located_elsewhere = re.match(r"error: \S+:\d+:\d+: ", errors[0]) is not None
        return located_elsewhere and re.search(rf"{re.escape(spec_file)}:\d+:\d+", errors[0]) is not None


# ------------------------------------------------------------------ mutations
def _sub_one(pattern: re.Pattern, text: str, rng: random.Random, make) -> str | None:
    found = list(pattern.finditer(text))
    if not found:
        return None
    match = rng.choice(found)
    return text[: match.start()] + make(match.group()) + text[match.end() :]


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2:
        return word + "x"
    i = rng.randrange(len(word))
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1 :]
    if kind == 1:
        return word[:i] + rng.choice("abcxyz_.0") + word[i:]
    if kind == 2 and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + rng.choice("qwertyuiop._-/") + word[i + 1 :]


def _lines(text: str) -> list[str]:
    return text.split("\n")


def mutate(text: str, rng: random.Random, yaml: bool = False) -> str:
    """One mutant of spec ``text`` (one to three random mutations); ``yaml``: the text
    is YAML / JSON, so inserted fields are written that way."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        text = _mutate_once(text, rng, yaml)
    return text


def _insert_field(text: str, rng: random.Random, yaml: bool) -> str | None:
    """A field (from ``_FIELDS``) inserted right after a random ``{``."""
    opens = [m.end() for m in re.finditer(r"\{", text)]
    if not opens:
        return None
    at = rng.choice(opens)
    field = rng.choice(_FIELDS)
    field = field + ", " if yaml else " " + field + " "
    return text[:at] + field + text[at:]


def _mutate_once(text: str, rng: random.Random, yaml: bool = False) -> str:
    if rng.random() < 0.4:
        return _mutate_semantic(text, rng, yaml)
    lines = _lines(text)
    kind = rng.randrange(12)
    result: str | None = None
    if kind == 0:  # typo in a quoted name
        result = _sub_one(_QUOTED, text, rng, lambda q: '"' + _typo(q[1:-1], rng) + '"')
    elif kind == 1:  # typo in a bare word (a field name, an enum, a YAML key)
        result = _sub_one(_WORD, text, rng, lambda w: _typo(w, rng))
    elif kind == 2:  # drop a line
        del lines[rng.randrange(len(lines))]
        result = "\n".join(lines)
    elif kind == 3:  # duplicate a line
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        result = "\n".join(lines)
    elif kind == 4:  # garbage line
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(_GARBAGE))
        result = "\n".join(lines)
    elif kind == 5:  # truncation
        result = text[: rng.randrange(len(text) + 1)]
    elif kind in (6, 7):  # a number becomes huge, zero, negative, not a number
        result = _sub_one(_NUMBER, text, rng, lambda _: rng.choice(_NUMBERS))
    elif kind == 8:  # wrong type: a string where a number is, and the reverse
        if rng.random() < 0.5:
            result = _sub_one(
                _NUMBER, text, rng, lambda n: rng.choice(['"abc"', '"' + n + '"', "true", "[1, 2]", "{ }", "null"])
            )
        else:
            result = _sub_one(
                _QUOTED,
                text,
                rng,
                lambda _: rng.choice(
                    ["7", "-1", "true", "[]", "{}", '""', '"."', '".x"', '"class"', '"a\\"b"', "null", '"\\x00"']
                ),
            )
    elif kind == 9:  # swap two lines
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        result = "\n".join(lines)
    elif kind == 10:  # a character flipped anywhere
        if text:
            i = rng.randrange(len(text))
            result = text[:i] + rng.choice("{}[]:\"'#,-\n \x00é") + text[i + 1 :]
    else:  # a number's digits repeated (a very large value of the same sign)
        result = _sub_one(_NUMBER, text, rng, lambda n: n + n.lstrip("-") * rng.randrange(1, 4))
    return text if result is None else result


def _mutate_semantic(text: str, rng: random.Random, yaml: bool) -> str:
    """Mutations a parser accepts: fields at the edge of their range, other names from
    the same spec, other layer types and enum values."""
    kind = rng.randrange(4)
    result: str | None = None
    if kind == 0:
        result = _insert_field(text, rng, yaml)
    elif kind == 1:  # a name used elsewhere in the spec (a layer confused with another)
        names = _QUOTED.findall(text)
        if names:
            result = _sub_one(_QUOTED, text, rng, lambda _: rng.choice(names))
    elif kind == 2:
        result = _sub_one(re.compile("|".join(_TYPES)), text, rng, lambda _: rng.choice(_TYPES))
    else:
        result = _sub_one(re.compile(r"\b(" + "|".join(_ENUMS) + r")\b"), text, rng, lambda _: rng.choice(_ENUMS))
    return text if result is None else result


# ------------------------------------------------------------------- running
@contextlib.contextmanager
def mirror(root: Path = ROOT) -> Iterator[Path]:
    """A temporary folder whose ``specs/`` is empty and whose other top-level entries are
    symlinks into ``root`` (so ``../surgery/zoo/...`` in a mutant resolves)."""
    folder = Path(tempfile.mkdtemp(prefix="surgery-fuzz-"))
    try:
        (folder / "specs").mkdir()
        for entry in root.iterdir():
            if entry.name not in ("specs", ".git", OUT):
                (folder / entry.name).symlink_to(entry)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_cli(argv: list[str]) -> Outcome:
    """Run ``surgery.cli.main(argv)`` in this process, capturing stderr; an exception
    that escapes is a crash (its traceback is kept)."""
    from surgery.cli import main

    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as exit_:  # argparse
        return Outcome(exit_.code if isinstance(exit_.code, int) else 1, err.getvalue())
    except BaseException:  # noqa: BLE001  (the point is to catch every escape)
        return Outcome(None, err.getvalue(), traceback.format_exc())
    return Outcome(code, err.getvalue())


def spec_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / "specs").iterdir() if p.suffix in SPEC_SUFFIXES)


def fuzz(
    count: int, seed: int, apply_every: int, folder: Path, specs: list[Path] | None = None, log=None
) -> list[tuple[Path, str, Outcome]]:
    """Run ``count`` mutants of each spec; returns the ``(mutant, command, outcome)`` failures."""
    failures = []
    for spec in specs or spec_files():
        failures += fuzz_spec(spec, count, seed, apply_every, folder, log)
    return failures


def fuzz_spec(
    spec: Path, count: int, seed: int, apply_every: int, folder: Path, log=None
) -> list[tuple[Path, str, Outcome]]:
    """The mutants of one spec (the same ones, by seed and name, wherever they run)."""
    failures = []
    text = spec.read_text()
    rng = random.Random(f"{seed}:{spec.name}")
    for index in range(count):
        mutant = folder / "specs" / f"m{index:04d}_{spec.name}"
        mutant.write_text(mutate(text, rng, yaml=spec.suffix != ".prototxt"))
        argv = ["plan", "-q", str(mutant)]
        if apply_every and index % apply_every == 0:
            argv = ["apply", "-q", str(mutant), "-o", str(folder / OUT / mutant.stem), "--force"]
        outcome = run_cli(argv)
        if not outcome.clean(str(mutant)):
            failures.append((mutant, argv[0], outcome))
            if log:
                log(mutant, argv[0], outcome)
        shutil.rmtree(folder / OUT, ignore_errors=True)
    return failures


def _print_failure(mutant: Path, command: str, outcome: Outcome) -> None:
    detail = outcome.trace.strip().splitlines()[-1] if outcome.trace else outcome.stderr.strip()[-300:]
    print(f"CRASH {command} {mutant.name}: exit {outcome.code}: {detail}", flush=True)


def _fuzz_isolated(
    count: int, seed: int, apply_every: int, folder: Path, specs: list[Path]
) -> list[tuple[Path, str, Outcome]]:
    """Each spec's mutants in a fresh process (what one spec's models and caches take is
    given back before the next: in one process the run grew to 8 GB), with a line per spec."""
    import multiprocessing
    import time

    context = multiprocessing.get_context("spawn")
    failures = []
    start = time.perf_counter()
    for number, spec in enumerate(specs, 1):
        with context.Pool(1) as pool:
            found = pool.apply(fuzz_spec, (spec, count, seed, apply_every, folder))
        for mutant, command, outcome in found:
            _print_failure(mutant, command, outcome)
        failures += found
        print(
            f"[{number}/{len(specs)}] {spec.name}: {count} mutants, {len(found)} failing "
            f"({time.perf_counter() - start:.0f} s so far)",
            flush=True,
        )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--count", type=int, default=40, help="mutants per spec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apply-every", type=int, default=10, help="apply (not only plan) every Nth mutant; 0: never")
    parser.add_argument("--spec", action="append", help="only these specs (file names in specs/)")
    parser.add_argument("--keep", type=Path, help="copy crashing mutants (and their tracebacks) into this folder")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "torch")
    specs = [ROOT / "specs" / name for name in args.spec] if args.spec else None
    with mirror() as folder:
        failures = _fuzz_isolated(args.count, args.seed, args.apply_every, folder, specs or spec_files())
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for mutant, command, outcome in failures:
                shutil.copy(mutant, args.keep / mutant.name)
                (args.keep / (mutant.name + ".txt")).write_text(f"{command}\n{outcome.stderr}\n{outcome.trace}")
    total = args.count * len(specs or spec_files())
    print(f"{len(failures)} of {total} mutants crashed or gave an unlocated error")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
