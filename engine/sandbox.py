"""A sandbox for programs in a tiny stack language: the tool the program tasks answer with.

Our own interpreter, because nothing the field trusts runs untrusted tiny programs in-process
under hard limits on steps, wall time, stack, call depth, integer size and output; it is plain
Python with no eval/exec, no imports of user text and no access to files, network or Python
itself, and it never recurses (its own call stack is a list), so no input can crash the engine.

The language: words separated by whitespace; a program's inputs start on the stack, the first
input deepest; what it prints with `.` is its output.

    123  -7          push an integer (at most 19 digits)
    + - * / %        (a b -- a op b); / and % round toward minus infinity; by zero is an error
    neg not          (a -- -a) and (a -- 1 if a == 0 else 0)
    = < >            (a b -- 1 or 0)
    dup drop swap    (a -- a a), (a -- ), (a b -- b a)
    over rot         (a b -- a b a), (a b c -- b c a)
    .                (a -- ) print a
    if A else B end  pop; non-zero runs A, zero runs B (`else B` may be left out)
    while B end      pop; zero leaves the loop, non-zero runs B and goes back to `while`
    : name B ;       define a word (top level only); it may call itself and words defined later

Every value must stay within +-(2**63 - 1), so `2**huge` style blow-ups end as an error after a
handful of steps instead of eating memory.

A failed run's error is one sentence that starts with what went wrong: for the program text
`program ...`, `word N: ...` or `the definition of ...`; for the inputs `inputs must be ...` or
`input ...`; at run time `stack underflow`, `division by zero`, `integer overflow` or the limit
it reached (`step limit`, `time limit`, `stack limit`, `call depth limit`, `output limit`).
Anything else, `sandbox fault: ...`, is a bug in this interpreter, reported rather than raised.

    >>> run("dup * 1 + .", [6]).output
    (37,)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

BINARY = ("+", "-", "*", "/", "%", "=", "<", ">")
UNARY = ("neg", "not")
STACK_WORDS = ("dup", "drop", "swap", "over", "rot")
CONTROL = ("if", "else", "end", "while", ":", ";")
BUILTINS = frozenset(BINARY + UNARY + STACK_WORDS + CONTROL + (".",))
NEEDS = {**{w: 2 for w in BINARY}, **{w: 1 for w in UNARY}, "dup": 1, "drop": 1, "swap": 2, "over": 2, "rot": 3, ".": 1}
INTEGER = re.compile(r"-?[0-9]+")
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class Limits:
    max_steps: int = 10_000  # instructions executed
    max_seconds: float = 0.1  # wall time of one run
    max_stack: int = 256  # values on the stack (the language's only memory)
    max_calls: int = 64  # depth of nested word calls
    max_output: int = 256  # values printed
    max_int: int = 2**63 - 1  # magnitude of any value
    max_chars: int = 4096  # program length


@dataclass(frozen=True)
class RunResult:
    ok: bool
    output: tuple[int, ...]  # what was printed (up to the error, if any)
    error: str  # "" when ok, else one sentence
    steps: int


@dataclass(frozen=True)
class CheckResult:
    passed: int
    failed: int
    first_error: str  # "" when every case passed

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.passed > 0


# ----------------------------------------------------------------------------- compile


class ProgramError(Exception):
    """A program that cannot run; the message is the sentence reported in RunResult.error."""


@dataclass(frozen=True)
class Compiled:
    code: list[tuple[str, object]]  # (op, arg) instructions
    where: list[int]  # the word number (1-based) each instruction came from


def _shown(word: str) -> str:
    return repr(word if len(word) <= 20 else word[:17] + "...")


def compile_program(text: str, limits: Limits = Limits()) -> Compiled:
    """Parse and resolve a program; raise ProgramError with the reason."""
    if len(text) > limits.max_chars:
        raise ProgramError(f"program is {len(text)} characters; the limit is {limits.max_chars}.")
    words = text.split()
    if not words:
        raise ProgramError("program is empty.")

    # split the top level from the definitions
    main: list[tuple[int, str]] = []
    bodies: dict[str, list[tuple[int, str]]] = {}
    defining: str | None = None
    i = 0
    while i < len(words):
        word, n = words[i], i + 1
        if word == ":":
            if defining is not None:
                raise ProgramError(f"word {n}: ':' inside the definition of {defining!r}; definitions cannot nest.")
            if i + 1 >= len(words) or not NAME.fullmatch(words[i + 1]) or words[i + 1] in BUILTINS:
                got = _shown(words[i + 1]) if i + 1 < len(words) else "nothing"
                raise ProgramError(f"word {n}: ':' needs a new name (lower-case letters, digits, _), got {got}.")
            defining = words[i + 1]
            if defining in bodies:
                raise ProgramError(f"word {n + 1}: {defining!r} is defined twice.")
            bodies[defining] = []
            i += 2
            continue
        if word == ";":
            if defining is None:
                raise ProgramError(f"word {n}: ';' without a ':' definition to end.")
            defining = None
        elif defining is not None:
            bodies[defining].append((n, word))
        else:
            main.append((n, word))
        i += 1
    if defining is not None:
        raise ProgramError(f"the definition of {defining!r} has no closing ';'.")

    code: list[tuple[str, object]] = []
    where: list[int] = []
    entry: dict[str, int] = {}

    def emit(op: str, arg: object, n: int) -> int:
        code.append((op, arg))
        where.append(n)
        return len(code) - 1

    for name, body in [("", main)] + list(bodies.items()):
        if name:
            entry[name] = len(code)
        open_blocks: list[tuple[str, int, int]] = []  # (kind, instruction to patch, word number)
        for n, word in body:
            if INTEGER.fullmatch(word):
                if len(word.lstrip("-")) > 19:
                    raise ProgramError(f"word {n}: integer literal {_shown(word)} is longer than 19 digits.")
                value = int(word)
                if abs(value) > limits.max_int:
                    raise ProgramError(f"word {n}: integer literal {_shown(word)} is beyond +-{limits.max_int}.")
                emit("push", value, n)
            elif word == "if":
                open_blocks.append(("if", emit("jz", None, n), n))
            elif word == "while":
                open_blocks.append(("while", emit("jz", None, n), n))
            elif word == "else":
                if not open_blocks or open_blocks[-1][0] != "if":
                    raise ProgramError(f"word {n}: 'else' without an open 'if'.")
                _, jz, at = open_blocks.pop()
                jump = emit("jmp", None, n)
                code[jz] = ("jz", len(code))
                open_blocks.append(("else", jump, at))
            elif word == "end":
                if not open_blocks:
                    raise ProgramError(f"word {n}: 'end' without an open 'if' or 'while'.")
                kind, at, _ = open_blocks.pop()
                if kind == "while":
                    emit("jmp", at, n)  # back to the test, which pops the next condition
                    code[at] = ("jz", len(code))
                elif kind == "if":
                    code[at] = ("jz", len(code))
                else:  # else
                    code[at] = ("jmp", len(code))
            elif word in NEEDS:
                emit(word, None, n)
            elif word in bodies:
                emit("call", word, n)
            else:
                raise ProgramError(f"word {n}: unknown word {_shown(word)}.")
        if open_blocks:
            kind, _, n = open_blocks[-1]
            raise ProgramError(f"word {n}: {kind!r} has no closing 'end'.")
        emit("ret" if name else "halt", None, body[-1][0] if body else 0)

    code = [("call", entry[arg]) if op == "call" else (op, arg) for op, arg in code]
    return Compiled(code, where)


# ----------------------------------------------------------------------------- run


def _execute(program: Compiled, inputs: list[int], limits: Limits) -> RunResult:
    code, where = program.code, program.where
    stack: list[int] = list(inputs)
    output: list[int] = []
    calls: list[int] = []
    pc, steps = 0, 0
    deadline = time.perf_counter() + limits.max_seconds
    big = limits.max_int

    def fail(message: str) -> RunResult:
        return RunResult(False, tuple(output), message, steps)

    while True:
        if steps >= limits.max_steps:
            return fail(f"step limit: the program ran {steps} steps without ending; the limit is {limits.max_steps}.")
        if steps % 256 == 0 and time.perf_counter() > deadline:
            return fail(f"time limit: the program ran longer than {limits.max_seconds} s.")
        steps += 1
        op, arg = code[pc]
        pc += 1
        need = NEEDS.get(op, 0)
        if len(stack) < need:
            return fail(f"stack underflow: {op!r} at word {where[pc - 1]} needs {need} values, the stack has {len(stack)}.")

        if op == "push":
            stack.append(arg)
        elif op in BINARY:
            b = stack.pop()
            a = stack.pop()
            if op == "+":
                value = a + b
            elif op == "-":
                value = a - b
            elif op == "*":
                value = a * b
            elif op in ("/", "%"):
                if b == 0:
                    return fail(f"division by zero: {op!r} at word {where[pc - 1]}.")
                value = a // b if op == "/" else a % b
            elif op == "=":
                value = int(a == b)
            elif op == "<":
                value = int(a < b)
            else:
                value = int(a > b)
            if value > big or value < -big:
                return fail(f"integer overflow: {op!r} at word {where[pc - 1]} gave a value beyond +-{big}.")
            stack.append(value)
        elif op == "neg":
            stack[-1] = -stack[-1]
        elif op == "not":
            stack[-1] = int(stack[-1] == 0)
        elif op == "dup":
            stack.append(stack[-1])
        elif op == "drop":
            stack.pop()
        elif op == "swap":
            stack[-1], stack[-2] = stack[-2], stack[-1]
        elif op == "over":
            stack.append(stack[-2])
        elif op == "rot":
            stack.append(stack.pop(-3))
        elif op == ".":
            if len(output) >= limits.max_output:
                return fail(f"output limit: the program printed more than {limits.max_output} values.")
            output.append(stack.pop())
        elif op == "jz":
            if not stack:
                return fail(f"stack underflow: the test at word {where[pc - 1]} needs a value, the stack is empty.")
            if stack.pop() == 0:
                pc = arg
        elif op == "jmp":
            pc = arg
        elif op == "call":
            if len(calls) >= limits.max_calls:
                return fail(f"call depth limit: more than {limits.max_calls} nested calls (runaway recursion?).")
            calls.append(pc)
            pc = arg
        elif op == "ret":
            pc = calls.pop()
        else:  # halt
            return RunResult(True, tuple(output), "", steps)

        if len(stack) > limits.max_stack:
            return fail(f"stack limit: more than {limits.max_stack} values on the stack.")


def _prepare(program: object, limits: Limits) -> Compiled:
    if isinstance(program, (bytes, bytearray)):
        try:
            program = bytes(program).decode("utf-8")
        except UnicodeDecodeError:
            raise ProgramError("program is not UTF-8 text.") from None
    if not isinstance(program, str):
        raise ProgramError(f"program must be text, not {type(program).__name__}.")
    return compile_program(program, limits)


def _check_inputs(inputs: object, limits: Limits) -> list[int]:
    values = list(inputs) if isinstance(inputs, (list, tuple)) else None
    if values is None or len(values) > limits.max_stack:
        raise ProgramError(f"inputs must be a list of at most {limits.max_stack} integers.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or abs(v) > limits.max_int:
            raise ProgramError(f"input {v!r} is not an integer within +-{limits.max_int}.")
    return values


def run(program: str | bytes, inputs: list[int] | tuple[int, ...] = (), limits: Limits = Limits()) -> RunResult:
    """Run a program on `inputs`; never raises: every failure is a RunResult with ok=False."""
    try:
        return _execute(_prepare(program, limits), _check_inputs(inputs, limits), limits)
    except ProgramError as exc:
        return RunResult(False, (), str(exc), 0)
    except Exception as exc:  # a bug of ours must still not take the engine down
        return RunResult(False, (), f"sandbox fault: {type(exc).__name__}.", 0)


def check(program: str | bytes, cases, limits: Limits = Limits()) -> CheckResult:
    """Run `program` on every (inputs, expected output) case; count passes and say why the first failed."""
    cases = list(cases)
    try:
        compiled = _prepare(program, limits)
    except ProgramError as exc:
        return CheckResult(0, len(cases), str(exc))
    except Exception as exc:
        return CheckResult(0, len(cases), f"sandbox fault: {type(exc).__name__}.")
    passed, first_error = 0, ""
    for i, (inputs, expected) in enumerate(cases, 1):
        try:
            result = _execute(compiled, _check_inputs(inputs, limits), limits)
        except ProgramError as exc:
            result = RunResult(False, (), str(exc), 0)
        except Exception as exc:
            result = RunResult(False, (), f"sandbox fault: {type(exc).__name__}.", 0)
        if result.ok and result.output == tuple(expected):
            passed += 1
        elif not first_error:
            shown = list(inputs)
            first_error = (f"case {i} {shown}: {result.error}" if not result.ok
                           else f"case {i} {shown}: expected {list(expected)}, got {list(result.output)}.")
    return CheckResult(passed, len(cases) - passed, first_error)
