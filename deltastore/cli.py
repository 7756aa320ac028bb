"""The ``deltastore`` command: info and verify here; demo, forget, restore as plugins.

Subcommands that need the unlearning layer register themselves through the
``deltastore.commands`` entry-point group, so the engine never imports it.

Exit status: 0 on success, 1 when the command fails at run time (a bad input
file, a damaged or missing store, an I/O error -- one paragraph on stderr,
never a traceback), 2 for usage errors (argparse's own). ``--debug`` (before
or after the subcommand) lets the exception through with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .errors import DeltaStoreError, InvalidArgumentError

# Used only when running from a source tree that is not installed (no entry points).
_FALLBACK_PLUGINS = {"audit": "unlearning.cli_audit:register_audit", "demo": "unlearning.cli_commands:register_demo",
                     "forget": "unlearning.cli_commands:register_forget", "lookup": "unlearning.cli_audit:register_lookup",
                     "restore": "unlearning.cli_commands:register_restore", "purge": "unlearning.cli_commands:register_purge"}
STORE_HELP = "the store directory (what Recorder wrote)"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


# --key-file of the command being run (main sets it): check_store_path opens encrypted stores with it.
_KEY_FILE: str | None = None


def check_store_path(path: str, flag: str = "STORE"):
    """``path`` unless it names something other than a directory (a missing path is left to the
    reader, which says that no store is there). Shared with the plugin commands. An
    ``s3://bucket/prefix`` URL is passed through: the object-storage backend checks it.

    An encrypted store comes back opened with its key (a StoreIO that every reader takes in
    place of the path): ``--key-file PATH``, else $DELTASTORE_KEY_FILE, else $DELTASTORE_KEY.
    """
    from .storage import is_url

    if not is_url(path):
        p = Path(path)
        if p.exists() and not p.is_dir():
            what = "is a file" if p.is_file() else "is not a directory"
            raise InvalidArgumentError(f"{flag}: expected a deltastore store (a directory with zarr.json), {path} {what}")
    return _with_key(path)


def _with_key(path: str):
    """The store opened with the CLI's key when it is encrypted (a key from --key-file for a plain store
    is an error; one from the environment is simply not used there)."""
    from .crypto.keys import key_from_env

    key = key_from_env(_KEY_FILE)
    if key is None:
        return path
    from .crypto.io import EncryptedStoreIO
    from .storage import open_io

    io = EncryptedStoreIO(open_io(path), key)
    try:
        io.bind()
    except DeltaStoreError as exc:
        from .errors import EncryptionKeyError

        if isinstance(exc, EncryptionKeyError) and exc.key_id is None and _KEY_FILE is None:
            return path  # a plain store, and the key came from the environment
        if not isinstance(exc, EncryptionKeyError):
            return path  # no store, or a damaged manifest: the reader says so
        raise
    return io


def _cmd_keygen(args) -> int:
    from .crypto.keys import generate_key_file

    key = generate_key_file(args.out)
    print(f"wrote a new store key to {args.out} (key id {key.key_id}); keep it safe: without it the stores it encrypts cannot be read")
    return 0


def _cmd_info(args) -> int:
    from .format.commit import erased_records, erased_steps
    from .read import StoreReader

    r = StoreReader(check_store_path(args.store))
    m = r.manifest
    sizes = r.nbytes_stored()
    info = {
        "path": str(r.root),
        "format_version": m.format_version,
        "committed_steps": r.committed_steps,
        "model_fingerprint": r.model_fingerprint,
        "plan": m.plan.to_json(),
        "value_dtype": m.value_dtype,
        "codec": m.codec,
        "codec_level": m.codec_level,
        "mask": {"seed": m.mask_seed, "pool": m.mask_pool},
        "steps_per_shard": m.steps_per_shard,
        "sample_id_type": m.sample_id_type,
        "params": m.num_params,
        "kept_per_step": m.kept_per_step,
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "kind": t.kind, "group": m.group_of(t.name).path,
             "selection": m.group_of(t.name).selection.name, "k": m.group_of(t.name).k}
            for t in m.tensors
        ],
        "bytes": sizes,
        "index_rows": r.index.num_rows,
        "trained": r.commit.get("trained"),  # the trained weights kept at close (FORMAT.md §5.1), or null
        # Steps a purge erased for good (FORMAT.md §5.2), and purges whose roll-forward is unfinished.
        "erased_steps": len(erased_steps(r.commit)),
        "pending_purges": [e["request"] for e in erased_records(r.commit) if e["state"] == "pending"],
        # Entries of the unlearning layer's ledger (FORMAT.md §7), counted by name: `deltastore audit` reads them.
        "ledger_entries": sum(1 for n in r.io.list_dir("ledger") if re.fullmatch(r"\d{8}-[A-Za-z0-9_.-]+\.json", n)),
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"store        {info['path']} (format v{m.format_version}, written by {m.writer})")
    print(f"steps        {r.committed_steps} committed, {info['index_rows']} index rows")
    print(f"plan         {m.plan.describe()}, values {m.value_dtype}, codec {m.codec} (level {m.codec_level}) + crc32c")
    print(f"parameters   {m.num_params:,}; kept per step {m.kept_per_step:,} ({m.kept_per_step / max(1, m.num_params):.1%})")
    print(f"fingerprint  {r.model_fingerprint}")
    print(f"bytes        {sizes['total']:,} total, index {sizes['index']:,}")
    trained = info["trained"]
    print(f"trained      {trained['size']:,} B in {trained['key']}" if trained else
          "trained      none kept (recording not closed, or closed before trained weights were kept)")
    print(f"ledger       {info['ledger_entries']} entries (`deltastore audit {args.store}` lists them)")
    if info["erased_steps"] or info["pending_purges"]:
        pend = f"; unfinished purge of {', '.join(info['pending_purges'])}" if info["pending_purges"] else ""
        print(f"erased       {info['erased_steps']} steps purged for good{pend}")
    for t in info["tensors"]:
        g = m.group_of(t["name"])
        b = sum(v for k, v in sizes.items() if k.startswith(g.path + "/"))
        print(f"  {t['name']:<40} {str(t['shape']):<18} {t['selection']:<9} k={t['k']:<9} {g.path} {b:,} B")
    return 0


def _cmd_verify(args) -> int:
    from .verify import verify_store

    rep = verify_store(check_store_path(args.store), progress=not args.quiet)
    for note in rep.notes:
        print(f"NOTE: {note}", file=sys.stderr)
    if rep.ok:
        print(f"OK: {rep.committed_steps} committed steps, {rep.chunks_checked} chunk groups and {rep.index_rows} index rows checked")
        return 0
    for p in rep.problems:
        print(f"BAD: {p}", file=sys.stderr)
    print(f"{len(rep.problems)} problem(s) in {rep.path}", file=sys.stderr)
    return 1


def build_parser(*, debug: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltastore", description="Record pruned training updates; forget data by subtracting them.")
    parser.add_argument("--version", action="version", version=f"deltastore {_version()}", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="on failure, show the Python traceback instead of a one-paragraph message")
    parser.add_argument("--key-file", metavar="PATH", default=None,
                        help="the key of an encrypted store (64 hex characters; else $DELTASTORE_KEY_FILE or $DELTASTORE_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="manifest, steps and bytes per array")
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("verify", help="check every checksum and that index and values agree")
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is drawn only when stderr is a terminal anyway)")
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("keygen", help="write a new random store key (64 hex characters) for encrypted stores")
    p.add_argument("out", help="the key file to create (never overwritten; readable by its owner only)")
    p.set_defaults(func=_cmd_keygen)
    for register in _plugins(debug):
        register(sub)
    # --debug after the subcommand too; SUPPRESS keeps the global flag's value when it is absent here.
    seen = set()
    for p in sub.choices.values():
        if id(p) not in seen:
            seen.add(id(p))
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback on failure")
            if p.prog.split()[-1] not in ("keygen", "demo"):
                p.add_argument("--key-file", metavar="PATH", default=argparse.SUPPRESS,
                               help="the key of an encrypted store (else $DELTASTORE_KEY_FILE or $DELTASTORE_KEY)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deltastore")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown (not installed)"


def _plugins(debug: bool = False):
    found = list(entry_points(group="deltastore.commands"))
    out = []
    for ep in sorted(found, key=lambda e: e.name):
        try:
            out.append(ep.load())
        except Exception as exc:  # a broken plugin must not take info/verify down with it
            if debug:
                raise
            print(f"deltastore: warning: could not load the {ep.name!r} command ({ep.value}): {_describe(exc)}", file=sys.stderr)
    # A source tree that is not installed, or installed metadata older than the tree
    # (commands added since): the project's own commands from their modules.
    names = {ep.name for ep in found}
    for name, spec in _FALLBACK_PLUGINS.items():
        if name in names:
            continue
        mod, _, attr = spec.partition(":")
        try:
            out.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            pass
    return out


def _one_paragraph(text: str) -> str:
    return " ".join(text.split())


def _describe(exc: BaseException) -> str:
    """What went wrong, in one paragraph: our errors as they are; OS errors as 'path: reason'."""
    if isinstance(exc, DeltaStoreError):
        return _one_paragraph(str(exc)) or type(exc).__name__
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None and exc.filename2 is not None:
            return _one_paragraph(f"{exc.filename} -> {exc.filename2}: {reason}")
        if exc.filename is not None:
            return _one_paragraph(f"{exc.filename}: {reason}")
        return _one_paragraph(reason)
    return _one_paragraph(
        f"unexpected {type(exc).__name__}: {exc} (this is a bug in deltastore; run with --debug for the traceback)"
    )


def _quiet_stdout() -> None:
    """After a broken pipe (``deltastore info | head``), point stdout at /dev/null so the
    interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by something without a descriptor
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(debug="--debug" in argv)
    args = parser.parse_args(argv)
    global _KEY_FILE
    _KEY_FILE = args.key_file
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"deltastore {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if args.debug:
            raise
        _quiet_stdout()
        return EXIT_FAILED
    except Exception as exc:  # the one place that turns any failure into a message and a status
        if args.debug:
            raise
        print(f"deltastore {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
