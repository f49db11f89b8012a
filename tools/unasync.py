"""Generate busway's sync code from its asyncio source.

Code with I/O is written once, for asyncio, in a package's ``_async/`` folder; this script
writes its sync twin into the sibling ``_sync/`` folder, one module for each. The sync module
is the source with ``async``/``await`` removed and the asyncio names replaced by their sync
names (``NAMES``, then ``PATTERNS``), formatted and its imports sorted by ruff. The generated
modules are committed; ``--check`` (run by ``make lint``) fails when one differs from what the
source makes, or when one has no source.

    python tools/unasync.py           # write every _sync/ module
    python tools/unasync.py --check   # list the stale ones, exit 1 if any
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tokenize
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = "_async", "_sync"

NAMES = {
    # the language and the standard library
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "AsyncIterator": "Iterator",
    "AsyncIterable": "Iterable",
    "AsyncGenerator": "Generator",
    "asynccontextmanager": "contextmanager",
    "StopAsyncIteration": "StopIteration",
    SOURCE: TARGET,
    # SQLAlchemy
    "AsyncConnection": "Connection",
    "AsyncSession": "Session",
    "AsyncEngine": "Engine",
    "AsyncTransaction": "NestedTransaction",
    "async_engine": "engine",
    "worker_async_engine": "worker_engine",
    # busway's own asyncio names
    "AsyncHandle": "Handle",
    "AsyncCommands": "Commands",
    "asavepoint": "savepoint",
    "abegin_writes": "begin_writes",
    "arun_in_transaction": "run_in_transaction",
    "_acall": "_call",
    "afreed_if_abandoned": "freed_if_abandoned",
    "araise_if_abandoned": "raise_if_abandoned",
    "aonce": "once",
    "arecorded": "recorded",
    "arecord": "record",
    "aflush": "flush",
    "awrite": "write",
    "aautocommit": "autocommit",
    "AsyncListener": "Listener",
    "AsyncLoop": "Loop",
    "_aloop": "_loop",
    "_aconsume": "_consume",
    "_ahandle": "_handle",
    "_apause": "_pause",
    "_achanged": "_changed",
    "aconsuming": "consuming",
    "areceive": "receive",
    "_arunning": "_running",
    "ainvoke": "invoke",
    "aadd": "add",
    "AsyncDispatch": "Dispatch",
    "adispatch": "dispatch",
    "adispatching": "dispatching",
    "ataken": "taken",
    "await_idle": "wait_idle",
    "alisten": "listen",
    "alistener": "listener",
    "apause": "pause",
    "atransaction_scope": "transaction_scope",
    "aclient": "client",
    "areplies": "replies",
    "asetup": "setup",
    "aconsume": "consume",
    "_aconsume_in_transaction": "_consume_in_transaction",
    "_aconsume_batch": "_consume_batch",
    "_aconsume_leased": "_consume_leased",
    "_abatch": "_batch",
    "_aclaim_batch": "_claim_batch",
    "_aclaim_first": "_claim_first",
    "_aacknowledge": "_acknowledge",
    "aonce_more_if_stale": "once_more_if_stale",
    "arun_before_ack": "run_before_ack",
    "arun_aside": "run_aside",
    "_arun_aside": "_run_aside",
    "agiven_back_on_failure": "given_back_on_failure",
    "acall": "call",
    "aexecute": "execute",
    "apipeline": "pipeline",
    "aclose": "close",
    "asend": "send",
    "_afetch": "_fetch",
    "_ahand_out": "_hand_out",
    "AsyncLink": "Link",
    "AsyncReceive": "Receive",
    "areceiving": "receiving",
    "AAround": "Around",
    "aarounds": "arounds",
    "aaround": "around",
    "_abind": "_bind",
    "aturn": "turn",
    "_anothing_claimed": "_nothing_claimed",
}
"""Names of the asyncio source and the sync names they become, wherever they occur."""

PATTERNS = [
    (
        re.compile(r"\bfrom sqlalchemy\.ext\.asyncio\.session import\b"),
        "from sqlalchemy.orm import",
    ),
    (re.compile(r"\bfrom sqlalchemy\.ext\.asyncio import\b"), "from sqlalchemy import"),
    (re.compile(r"\.worker_async_engine\.sync_engine\b"), ".worker_engine"),
    (re.compile(r"\bawait asyncio\.to_thread\((\w+), "), r"\1("),
    (re.compile(r"\basyncio\.sleep\("), "time.sleep("),
    (re.compile(r"^import asyncio$", re.MULTILINE), "import time"),
]
"""Textual rewrites, applied to the source before its names."""

HEADER = (
    "# Generated from {source} by tools/unasync.py: do not edit.\n"
    "# Change the asyncio source, then run `make generate`.\n"
)


def pairs(root: Path) -> Iterator[tuple[Path, Path]]:
    """Each asyncio source module below ``root/src`` and the sync module made from it."""
    for source in sorted((root / "src").rglob(f"{SOURCE}/*.py")):
        yield source, source.parent.parent / TARGET / source.name


def orphans(root: Path) -> list[Path]:
    """Generated modules whose source is gone."""
    return [
        target
        for target in sorted((root / "src").rglob(f"{TARGET}/*.py"))
        if not (target.parent.parent / SOURCE / target.name).exists()
    ]


def unasync(text: str) -> str:
    """The sync code of the asyncio source ``text``, not yet formatted."""
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(position: tuple[int, int]) -> int:
        return offsets[position[0] - 1] + position[1]

    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    edits: list[tuple[int, int, str]] = []
    for index, token in enumerate(tokens):
        if token.type != tokenize.NAME:
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.string == "await" or (
            token.string == "async"
            and following is not None
            and following.string in ("def", "with", "for")
        ):
            assert following is not None
            edits.append((at(token.start), at(following.start), ""))
        elif token.string == "Awaitable" and following is not None and following.string == "[":
            edits.append((at(token.start), at(following.end), ""))
            edits.append((*_closing(tokens, index + 1, at), ""))
        elif token.string in NAMES:
            edits.append((at(token.start), at(token.end), NAMES[token.string]))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _closing(
    tokens: Sequence[tokenize.TokenInfo], opening: int, at: Callable[[tuple[int, int]], int]
) -> tuple[int, int]:
    """Where the bracket matching the one at ``tokens[opening]`` is."""
    depth = 0
    for token in tokens[opening:]:
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
            if depth == 0:
                offset = at(token.start)
                return offset, offset + 1
    raise SyntaxError("unbalanced brackets after Awaitable")


def generate(source: Path, root: Path) -> str:
    """The whole generated module of ``source``: header, code, formatted by ruff."""
    code = unasync(source.read_text("utf-8"))
    name = str(source.relative_to(root))
    code = _ruff(["check", "--fix-only", "--select", "I,F401", "--exit-zero"], code, name, root)
    code = _ruff(["format"], code, name, root)
    return HEADER.format(source=name) + code


def _ruff(arguments: list[str], code: str, name: str, root: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, "--stdin-filename", name, "-"],
        input=code,
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"ruff {arguments[0]} failed on the code generated from {name}:\n{done.stderr}"
        )
    return done.stdout


def stale(root: Path) -> list[str]:
    """What is out of date below ``root``, a sentence each."""
    found = []
    for source, target in pairs(root):
        relative = target.relative_to(root)
        if not target.exists():
            found.append(f"{relative} is missing")
        elif target.read_text("utf-8") != generate(source, root):
            found.append(f"{relative} differs from what {source.relative_to(root)} makes")
    found += [f"{target.relative_to(root)} has no source" for target in orphans(root)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; fail if stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository's root")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.check:
        problems = stale(root)
        for problem in problems:
            print(f"{problem}: run `make generate`", file=sys.stderr)
        return 1 if problems else 0
    for source, target in pairs(root):
        code = generate(source, root)
        if not target.exists() or target.read_text("utf-8") != code:
            target.parent.mkdir(exist_ok=True)
            target.write_text(code, "utf-8")
            print(f"wrote {target.relative_to(root)}")
    for target in orphans(root):
        target.unlink()
        print(f"removed {target.relative_to(root)}, its source is gone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
