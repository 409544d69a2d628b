"""Mutation testing of credit's engine and methods: a small AST mutator of our own.

Each mutant is one small change to one source file (a flipped sign, a dropped term, a
swapped comparison, a constant changed, a ``tf.stop_gradient`` or a transpose removed, a
``return None``). The suite *kills* a mutant when one of the tests that runs the mutated
line fails. The score is the share of mutants killed.

How it runs, for speed on a small machine:

- The repository is copied once to a scratch folder; each mutant patches one file there
  and restores it afterwards. The working tree is never touched.
- One coverage run of the test files (with a context per test) maps each source line to
  the tests that execute it (tracing a ``tf.function`` runs its Python, so graph code is
  covered too). It is cached under ``.mutation/`` by the hash of the sources and tests.
- The parent process imports TensorFlow and Keras once, then forks a child per mutant,
  which imports ``credit`` from the scratch copy and runs only the tests covering the
  mutated line, fastest first, stopping at the first failure (``pytest -x``), under a
  timeout. A mutant on a line no test runs survives.

Not mutated (noise, not behaviour): docstrings and every string constant (error
messages, names), f-strings, ``raise`` and ``assert`` statements, logging/warnings/print
calls, and lines marked ``# pragma: no mutate``.

Usage (one line; prints the score at the end)::

    python tools/mutation.py                          # every mutant of the default files
    python tools/mutation.py --sample 200 --seed 0    # a fixed random sample
    python tools/mutation.py --files credit/transports.py --list   # list mutants only

Outputs ``mutants.csv`` (file, line, operator, original -> mutant, status, the test that
killed it) and ``summary.md`` (score per file and per group) in ``--out``. Mutants listed
in ``tools/mutation_equivalent.txt`` (key and a one-line reason) are reported as
equivalent and left out of the denominator.
"""

import argparse
import ast
import csv
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FILES = ["credit/transports.py", "credit/signal.py", "credit/methods"]
# The test files whose coverage selects the tests of a mutant. A coverage run of every test
# file takes about 30 min on 2 cores; these (about 8 min) cover all but ~2% of the lines that
# every file covers (test_core, test_engine, test_keras_suite and test_distributed, 25 min
# under coverage, add 21 lines of transports.py, kickback, signal.py and DFA). Pass --tests
# to use more.
# Every tests/test_mutation_kills*.py counts too (one file per area, so that tests added
# for one file's survivors rerun only that file's coverage map).
DEFAULT_TESTS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(
    os.path.join(ROOT, "tests", "test_mutation_kills*.py"))) + [
                 "tests/test_methods.py",
                 "tests/test_synthetic_gradients.py", "tests/test_recurrent.py",
                 "tests/test_local_losses.py", "tests/test_forward_methods.py",
                 "tests/test_method_state.py", "tests/test_engine_trust.py",
                 "tests/test_recurrent_transports.py", "tests/test_forward_forward.py",
                 "tests/test_synthesizer_sizes.py", "tests/test_residual_points.py"]
CACHE = os.path.join(ROOT, ".mutation", "cache")
EQUIVALENT_FILE = os.path.join(ROOT, "tools", "mutation_equivalent.txt")
PYTEST_ARGS = ["-p", "no:xdist", "-p", "no:cacheprovider", "-o", "addopts=", "-q",
               "--no-header", "-W", "ignore::DeprecationWarning"]

# -- mutants ------------------------------------------------------------------------------

ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
         ast.FloorDiv: ast.Mult, ast.Pow: ast.Mult}
COMPARE = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt,
           ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In,
           ast.Is: ast.IsNot, ast.IsNot: ast.Is}
# Calls replaced by their first argument (the op is dropped).
UNWRAP = {"stop_gradient", "transpose", "sign", "abs", "sqrt", "square", "relu",
          "maximum", "minimum", "clip_by_value", "clip"}
# Calls replaced by a sibling op.
SWAP_CALL = {"reduce_sum": "reduce_mean", "reduce_mean": "reduce_sum", "sum": "mean",
             "mean": "sum", "maximum": "minimum", "minimum": "maximum"}
QUIET_CALLS = {"warn", "print", "debug", "info", "warning", "error", "exception", "log"}


@dataclass
class Mutant:
    file: str            # relative path
    line: int
    end_line: int
    operator: str
    original: str
    mutated: str
    key: str = ""        # stable id: file::function::operator::orig->mut#k
    span: tuple = ()     # (lineno, col, end_lineno, end_col), byte columns
    text: str = ""       # replacement text for the span
    lines: tuple = ()    # lines whose coverage selects the tests
    status: str = ""
    killer: str = ""
    seconds: float = 0.0
    tests_run: int = 0
    note: str = field(default="")


def _call_name(call):
    f = call.func
    if isinstance(f, ast.Attribute):
        return f.attr
    if isinstance(f, ast.Name):
        return f.id
    return ""


class _Finder(ast.NodeVisitor):
    """Walks a module and yields (node, operator, new_text, lines) for each mutation."""

    def __init__(self, source_lines):
        self.lines = source_lines
        self.found = []
        self.scope = []
        self.stmt_lines = None

    # Subtrees that are never mutated.
    def visit_Raise(self, node):
        pass

    def visit_Assert(self, node):
        pass

    def visit_JoinedStr(self, node):
        pass

    def _skip_line(self, node):
        return "pragma: no mutate" in self.lines[node.lineno - 1]

    def _add(self, node, operator, new, lines=None):
        if self._skip_line(node):
            return
        text = new if isinstance(new, str) else "(" + ast.unparse(new) + ")"
        self.found.append((node, operator, text, lines or self.stmt_lines,
                           ".".join(self.scope) or "<module>"))

    def _scoped(self, node):
        self.scope.append(node.name)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # the docstring
        header = tuple(range(node.lineno, (node.body[0].lineno if node.body else node.lineno)))
        self.stmt_lines = header
        for d in node.decorator_list:
            self.visit(d)
        if hasattr(node, "args"):
            self.visit(node.args)
        for stmt in body:
            self.visit(stmt)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Module(self, node):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        for stmt in body:
            self.visit(stmt)

    def generic_visit(self, node):
        if isinstance(node, ast.stmt):
            if isinstance(node, (ast.If, ast.While, ast.For, ast.With, ast.Try)):
                first = node.body[0].lineno if node.body else node.end_lineno + 1
                self.stmt_lines = tuple(range(node.lineno, max(first, node.lineno + 1)))
            else:
                self.stmt_lines = tuple(range(node.lineno, node.end_lineno + 1))
            self._statement(node)
        saved = self.stmt_lines
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                self.visit(child)
                self.stmt_lines = saved
            else:
                self.visit(child)

    # -- statements ---------------------------------------------------------------------

    def _statement(self, node):
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            self._add(node, "return_none", "return None")
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            name = _call_name(node.value)
            f = node.value.func
            quiet = name in QUIET_CALLS or (isinstance(f, ast.Attribute) and isinstance(
                f.value, ast.Name) and f.value.id in ("logging", "warnings", "logger", "log"))
            if not quiet:
                self._add(node, "drop_call", "pass")
        if isinstance(node, ast.AugAssign):
            self._add(node, "drop_statement", "pass")
        if isinstance(node, (ast.If, ast.While)) and not isinstance(node.test, ast.Compare):
            if self._is_type_checking(node.test):
                return
            inner = node.test.operand if (isinstance(node.test, ast.UnaryOp) and isinstance(
                node.test.op, ast.Not)) else ast.UnaryOp(ast.Not(), node.test)
            self._add_expr(node.test, "negate_condition", inner)

    @staticmethod
    def _is_type_checking(test):
        return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"

    def _add_expr(self, node, operator, new):
        self._add(node, operator, new)

    # -- expressions --------------------------------------------------------------------

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            self._add(node, "constant", ast.Constant(not v))
        elif isinstance(v, int):
            self._add(node, "constant", ast.Constant(1 if v == 0 else (0 if v == 1 else v + 1)))
        elif isinstance(v, float):
            self._add(node, "constant", ast.Constant(1.0 if v == 0 else v * 2))

    def visit_BinOp(self, node):
        strings = any(isinstance(o, (ast.JoinedStr,)) or (
            isinstance(o, ast.Constant) and isinstance(o.value, (str, bytes)))
            for o in (node.left, node.right))
        if not strings:
            if type(node.op) in ARITH:
                self._add(node, "arithmetic", ast.BinOp(node.left, ARITH[type(node.op)](),
                                                        node.right))
            if isinstance(node.op, (ast.Add, ast.Sub)):
                self._add(node, "drop_term", node.left)
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.USub, ast.Not)):
            self._add(node, "negate", node.operand)
        self.generic_visit(node)

    def visit_Compare(self, node):
        op = type(node.ops[0])
        if op in COMPARE:
            self._add(node, "compare", ast.Compare(node.left, [COMPARE[op]()] + node.ops[1:],
                                                   node.comparators))
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._add(node, "boolean", ast.BoolOp(other, node.values))
        self.generic_visit(node)

    def visit_IfExp(self, node):
        self._add(node, "negate_condition", ast.IfExp(ast.UnaryOp(ast.Not(), node.test),
                                                      node.body, node.orelse))
        self.generic_visit(node)

    def visit_Call(self, node):
        name = _call_name(node)
        f = node.func
        if name in QUIET_CALLS or (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                                   and f.value.id in ("logging", "warnings")):
            return
        if name in UNWRAP and node.args and not isinstance(node.args[0], ast.Starred):
            self._add(node, "remove_call", node.args[0])
        if name in SWAP_CALL and isinstance(f, ast.Attribute):
            self._add(node, "swap_call", ast.Call(
                ast.Attribute(f.value, SWAP_CALL[name], ast.Load()), node.args, node.keywords))
        self.generic_visit(node)


def _byte_offsets(lines):
    """Start offset (in bytes) of each line of the utf-8 encoded source."""
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line.encode("utf-8"))
    return offsets


def find_mutants(path):
    """Every mutant of one file (relative to the repository root), in source order."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines(keepends=True)
    finder = _Finder(lines)
    finder.visit(ast.parse(source))
    raw = source.encode("utf-8")
    offsets = _byte_offsets(lines)
    mutants, seen = [], Counter()
    for node, operator, text, stmt_lines, scope in finder.found:
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        original = raw[start:end].decode("utf-8")
        new = raw[:start] + text.encode("utf-8") + raw[end:]
        if text.strip("()") == original:
            continue
        try:
            compile(new, path, "exec")
        except SyntaxError:
            continue
        short = " ".join(original.split())
        short = short if len(short) <= 60 else short[:57] + "..."
        mshort = " ".join(text.split())
        mshort = mshort if len(mshort) <= 60 else mshort[:57] + "..."
        base = f"{path}::{scope}::{operator}::{short} -> {mshort}"
        seen[base] += 1
        mutants.append(Mutant(
            file=path, line=node.lineno, end_line=node.end_lineno, operator=operator,
            original=short, mutated=mshort, key=f"{base}#{seen[base]}",
            span=(start, end), text=text,
            lines=tuple(stmt_lines or range(node.lineno, node.end_lineno + 1))))
    return mutants


def source_files(specs):
    files = []
    for spec in specs:
        full = os.path.join(ROOT, spec)
        if os.path.isdir(full):
            for name in sorted(os.listdir(full)):
                if name.endswith(".py"):
                    files.append(os.path.join(spec, name).replace(os.sep, "/"))
        elif os.path.isfile(full):
            files.append(spec)
        else:
            raise SystemExit(f"--files: {spec!r} is neither a file nor a folder under {ROOT}.")
    return files


def group_of(path):
    return "credit/methods/" if path.startswith("credit/methods/") else path


# -- the scratch tree and the forked children -----------------------------------------------

def make_scratch():
    scratch = tempfile.mkdtemp(prefix="credit-mutation-")
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".mutation", "results",
                                    "*.egg-info", ".pytest_cache")
    for name in os.listdir(ROOT):
        if name in (".git", "results", ".mutation") or name.endswith(".egg-info"):
            continue
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(scratch, name), ignore=ignore)
        else:
            shutil.copy2(src, scratch)
    os.makedirs(os.path.join(scratch, "results"), exist_ok=True)
    return scratch


def _fork(scratch, target, timeout):
    """Run ``target()`` in a forked child in ``scratch``; (exit code or None on timeout, s)."""
    start = time.time()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.chdir(scratch)
            sys.path.insert(0, scratch)
            log = os.open(os.path.join(scratch, ".child.log"),
                          os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = target()
        except BaseException:  # noqa: BLE001 - report anything as a child failure
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 3)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.time() - start
        if time.time() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, time.time() - start
        time.sleep(0.05)


def _check_import(scratch):
    mod = sys.modules.get("credit")
    if mod is not None and not os.path.abspath(mod.__file__).startswith(scratch):
        raise RuntimeError(f"credit was imported from {mod.__file__}, not the scratch copy")


def coverage_map(scratch, files, tests, timeout):
    """{file: {line: [test ids]}}, {test id: seconds}, [failing tests] of the clean tree."""
    out = os.path.join(scratch, ".coverage_map.json")

    def target():
        import coverage
        import pytest

        cov = coverage.Coverage(data_file=None, include=[os.path.join(scratch, f) for f in files])
        cov.start()
        times, failed = defaultdict(float), []

        class Contexts:
            @pytest.hookimpl(hookwrapper=True)
            def pytest_runtest_protocol(self, item, nextitem):
                cov.switch_context(item.nodeid)
                yield
                cov.switch_context("")

            def pytest_runtest_logreport(self, report):
                times[report.nodeid] += report.duration
                if report.failed:
                    failed.append(report.nodeid)

        code = pytest.main(PYTEST_ARGS + ["-m", "not slow", "-p", "no:randomly"] + tests,
                           plugins=[Contexts()])
        cov.stop()
        _check_import(scratch)
        data = cov.get_data()
        lines = {}
        for f in data.measured_files():
            rel = os.path.relpath(f, scratch).replace(os.sep, "/")
            by_line = data.contexts_by_lineno(f)
            lines[rel] = {int(k): sorted(v) for k, v in by_line.items()}
        with open(out, "w") as fh:
            json.dump({"lines": lines, "times": times, "failed": sorted(set(failed)),
                       "code": int(code)}, fh)
        return 0

    code, seconds = _fork(scratch, target, timeout)
    if code != 0 or not os.path.exists(out):
        with open(os.path.join(scratch, ".child.log")) as fh:
            tail = fh.read()[-3000:]
        raise SystemExit(f"the coverage run failed (exit {code}):\n{tail}")
    with open(out) as fh:
        result = json.load(fh)
    return result, seconds


def run_mutant(scratch, mutant, tests, timeout):
    """Apply ``mutant`` in the scratch tree, run ``tests`` (-x); set its status."""
    path = os.path.join(scratch, mutant.file)
    with open(path, "rb") as fh:
        clean = fh.read()
    start, end = mutant.span
    with open(path, "wb") as fh:
        fh.write(clean[:start] + mutant.text.encode("utf-8") + clean[end:])
    for cache in ("__pycache__",):
        shutil.rmtree(os.path.join(os.path.dirname(path), cache), ignore_errors=True)
    first_failure = os.path.join(scratch, ".first_failure")
    if os.path.exists(first_failure):
        os.remove(first_failure)

    def target():
        import pytest

        class First:
            def pytest_runtest_logreport(self, report):
                if report.failed and not os.path.exists(first_failure):
                    with open(first_failure, "w") as fh:
                        fh.write(report.nodeid)

        code = pytest.main(PYTEST_ARGS + ["-x", "-p", "no:randomly"] + tests, plugins=[First()])
        _check_import(scratch)
        return int(code)

    try:
        code, seconds = _fork(scratch, target, timeout)
    finally:
        with open(path, "wb") as fh:
            fh.write(clean)
        shutil.rmtree(os.path.join(os.path.dirname(path), "__pycache__"), ignore_errors=True)
    mutant.seconds = round(seconds, 2)
    mutant.tests_run = len(tests)
    if code is None:
        mutant.status = "timeout"
    elif code == 0:
        mutant.status = "survived"
    elif code in (1, 2):  # tests failed / errors in collection (the module did not import)
        mutant.status = "killed"
        if os.path.exists(first_failure):
            with open(first_failure) as fh:
                mutant.killer = fh.read().strip()
        else:
            mutant.killer = "(collection error)"
    else:
        mutant.status = "error"
        mutant.note = f"pytest exit {code}"


# -- reporting ------------------------------------------------------------------------------

def load_equivalent():
    """{key: reason} from tools/mutation_equivalent.txt (``key<TAB>reason`` per line)."""
    result = {}
    if os.path.exists(EQUIVALENT_FILE):
        with open(EQUIVALENT_FILE, encoding="utf-8") as fh:
            for line in fh:
                line = line.rstrip("\n")
                if not line.strip() or line.startswith("#"):
                    continue
                key, _, reason = line.partition("\t")
                if not reason.strip():
                    raise SystemExit(f"{EQUIVALENT_FILE}: {key!r} has no reason; write one "
                                     "after a tab.")
                result[key.strip()] = reason.strip()
    return result


def scores(mutants):
    """{group: (killed, counted, equivalent)}; a timeout counts as not killed (the cap
    on a mutant's time is short of the full covering tests: conservative)."""
    table = defaultdict(lambda: [0, 0, 0])
    for m in mutants:
        for g in sorted({m.file, group_of(m.file), "all"}):
            if m.status == "equivalent":
                table[g][2] += 1
                continue
            table[g][1] += 1
            table[g][0] += m.status == "killed"
    return {g: tuple(v) for g, v in table.items()}


def write_outputs(mutants, out, header):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "mutants.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "line", "operator", "original", "mutated", "status", "killed_by",
                    "tests_run", "seconds", "key", "note"])
        for m in mutants:
            w.writerow([m.file, m.line, m.operator, m.original, m.mutated, m.status, m.killer,
                        m.tests_run, m.seconds, m.key, m.note])
    table = scores(mutants)
    lines = ["# Mutation score", "", header, "",
             "| file or group | killed | mutants | equivalent (excluded) | score |",
             "|---|---|---|---|---|"]
    for g in sorted(table, key=lambda g: (g == "all", g.count("/") == 1 and g.endswith("/"), g)):
        k, n, e = table[g]
        lines.append(f"| {g} | {k} | {n} | {e} | {100 * k / n:.1f}% |" if n else
                     f"| {g} | 0 | 0 | {e} | - |")
    survivors = [m for m in mutants if m.status in ("survived", "timeout", "error")]
    if survivors:
        lines += ["", "## Surviving mutants", "",
                  "| file:line | operator | original | mutant | status | note |",
                  "|---|---|---|---|---|---|"]
        for m in survivors:
            lines.append(f"| {m.file}:{m.line} | {m.operator} | `{m.original}` | "
                         f"`{m.mutated}` | {m.status} | {m.note} |")
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return table


def _hash(paths):
    h = hashlib.sha256()
    for p in paths:
        full = os.path.join(ROOT, p)
        h.update(p.encode())
        if os.path.isfile(full):
            with open(full, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", default=DEFAULT_FILES,
                        help="source files or folders to mutate (default: %(default)s)")
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS,
                        help="test files that may kill mutants (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=None,
                        help="run a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--limit", type=int, default=None, help="run the first N mutants")
    parser.add_argument("--only", default=None,
                        help="run only mutants whose key contains this text")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per mutant (default: 3x the covering tests' clean "
                             "time + 60, at most --max-seconds)")
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="cap on the default per-mutant timeout; a mutant still running "
                             "then is a 'timeout' and counts as not killed")
    parser.add_argument("--rerun", default=None, metavar="CSV",
                        help="the mutants.csv of an earlier run: the same mutants, those it "
                             "killed kept as killed (tests were only added), the others rerun")
    parser.add_argument("--minutes", type=float, default=None,
                        help="start no mutant after this many minutes; the report covers "
                             "the mutants run (a sample runs in random order, so they are a "
                             "random sample too)")
    parser.add_argument("--out", default=os.path.join(ROOT, ".mutation"),
                        help="folder for mutants.csv and summary.md (the coverage maps are "
                             "cached in .mutation/cache)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    t0 = time.time()

    files = source_files(args.files)
    mutants = [m for f in files for m in find_mutants(f)]
    if args.only:
        mutants = [m for m in mutants if args.only in m.key]
    total = len(mutants)
    earlier = {}
    if args.rerun:
        with open(args.rerun, newline="", encoding="utf-8") as fh:
            earlier = {r["key"]: r for r in csv.DictReader(fh)}
        mutants = [m for m in mutants if m.key in earlier]
    if args.sample is not None:
        # Random order, so that a run cut short by --minutes is still a random sample.
        mutants = random.Random(args.seed).sample(mutants, min(args.sample, len(mutants)))
    if args.limit is not None:
        mutants = mutants[:args.limit]
    if args.list:
        for m in mutants:
            print(f"{m.file}:{m.line}\t{m.operator}\t{m.original}  ->  {m.mutated}")
        print(f"{len(mutants)} of {total} mutants")
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    # Imported once here, so that each forked child starts with them loaded. No TF op may
    # run in this process before forking.
    import keras  # noqa: F401
    import pytest  # noqa: F401
    import tensorflow  # noqa: F401

    tests = [t for t in args.tests if os.path.exists(os.path.join(ROOT, t))]
    scratch = make_scratch()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(CACHE, exist_ok=True)
    try:
        cmap = {"lines": {}, "times": {}, "failed": []}
        common = sorted(files) + ["tests/conftest.py", "setup.cfg"] + source_files(["credit"])
        for test in tests:
            # One cached map per test file: adding tests to one file reruns only its map.
            cache = os.path.join(CACHE, "coverage_" + test.replace("/", "_") + ".json")
            digest = _hash(common + [test])
            part = None
            if os.path.exists(cache):
                with open(cache) as fh:
                    part = json.load(fh)
                if part.get("digest") != digest:
                    part = None
            if part is None:
                print(f"coverage run of {test} ...", flush=True)
                part, seconds = coverage_map(scratch, files, [test], timeout=3600)
                part["digest"] = digest
                with open(cache, "w") as fh:
                    json.dump(part, fh)
                print(f"  {len(part['times'])} tests, {seconds:.0f} s; failing on the clean "
                      f"tree (not used): {part['failed']}", flush=True)
            for f, lines in part["lines"].items():
                for ln, ctx in lines.items():
                    cmap["lines"].setdefault(f, {}).setdefault(ln, []).extend(ctx)
            cmap["times"].update(part["times"])
            cmap["failed"] += part["failed"]
        failed = set(cmap["failed"])
        times = defaultdict(float)
        for nodeid, t in cmap["times"].items():
            times[nodeid] += t
        by_file = {f: {int(k): [t for t in v if t and t not in failed]
                       for k, v in lines.items()} for f, lines in cmap["lines"].items()}

        equivalent = load_equivalent()
        print(f"{len(mutants)} mutants (of {total}) in {len(files)} files", flush=True)
        for i, m in enumerate(mutants, 1):
            if args.minutes is not None and time.time() - t0 > 60 * args.minutes:
                print(f"--minutes {args.minutes} reached: {i - 1} of {len(mutants)} mutants "
                      "run; the rest are left out of the report", flush=True)
                mutants = mutants[:i - 1]
                break
            if m.key in equivalent:
                m.status, m.note = "equivalent", equivalent[m.key]
                continue
            before = earlier.get(m.key)
            if before is not None and before["status"] == "killed":
                m.status, m.killer, m.note = "killed", before["killed_by"], "earlier run"
                continue
            lines = by_file.get(m.file, {})
            covering = set()
            for ln in m.lines:
                covering.update(lines.get(ln, ()))
            if not covering and any(ln in lines for ln in m.lines):
                # Run at import time only (a default, a constant): every test of the file.
                covering = {t for ts in lines.values() for t in ts}
            if not covering:
                m.status, m.note = "survived", "no test runs this line"
                continue
            # Targeted tests first, then the fastest: -x stops at the first failure.
            ordered = sorted(covering, key=lambda t: ("test_mutation_kills" not in t,
                                                      times.get(t, 0.0), t))
            budget = args.timeout or min(args.max_seconds,
                                         60 + 3 * sum(times.get(t, 1.0) for t in ordered))
            run_mutant(scratch, m, ordered, budget)
            print(f"[{i}/{len(mutants)}] {m.status:8s} {m.file}:{m.line} {m.operator}: "
                  f"{m.original} -> {m.mutated}  ({m.seconds:.1f} s"
                  f"{', ' + m.killer if m.killer else ''})", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    elapsed = time.time() - t0
    mutants.sort(key=lambda m: (m.file, m.line))
    sampled = f"a random sample of {len(mutants)} (seed {args.seed})" if len(mutants) < total \
        else f"all {total}"
    if args.rerun:
        sampled = (f"the {len(mutants)} mutants of {os.path.relpath(args.rerun, ROOT)} (its "
                   "kills kept, the rest rerun)")
    header = (f"{sampled} of {total} mutants of {', '.join(args.files)}; tests: "
              f"{', '.join(tests)}; {elapsed / 60:.1f} min.")
    table = write_outputs(mutants, args.out, header)
    print()
    for g in sorted(table):
        k, n, e = table[g]
        if n:
            print(f"{g:50s} {k:4d}/{n:<4d} killed  {100 * k / n:5.1f}%  ({e} equivalent)")
    k, n, _ = table.get("all", (0, 0, 0))
    print(f"\nmutation score: {100 * k / max(n, 1):.1f}% ({k} of {n} killed; {header})")
    print(f"details: {os.path.join(args.out, 'summary.md')}, "
          f"{os.path.join(args.out, 'mutants.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
