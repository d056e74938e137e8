"""``lightning-zk ledger RUN``: inspect, prove and verify a run's Merkle ledger.

::

    lightning-zk ledger RUN                                  size and root
    lightning-zk ledger RUN --verify [--prefix]              every leaf vs steps.jsonl, manifest root
    lightning-zk ledger RUN --prove STEP [--size N] [--out proof.json]
    lightning-zk ledger RUN --check-proof proof.json [--root HEX]
    lightning-zk ledger RUN --consistency OLD_SIZE OLD_ROOT_HEX [--out proof.json]

Exit status: 0 when what was asked verifies, 1 when it does not (or the run cannot be read),
2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..ledger.claims import check_run_claims
from ..ledger.merkle import (
    LEDGER_FILE,
    LeafProof,
    Ledger,
    LedgerError,
    LedgerFileError,
    LedgerMismatchError,
    consistency_to_json,
    load_json,
    parse_root,
    verify_consistency,
)
from ..ledger.rundir import RunDirectory
from ._guard import run_command

HELP = "Merkle ledger of a run: size and root, inclusion/consistency proofs, --verify"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-zk ledger", description=HELP,
        epilog="Exit status 0 only when what was asked verifies.",
    )
    parser.add_argument("run", type=Path, help="run directory (holding ledger.sqlite)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--verify", action="store_true",
                        help="recompute every leaf from steps.jsonl; check size, leaves, stored "
                             "hashes and the manifest's root")
    action.add_argument("--prove", type=int, metavar="STEP",
                        help="write an inclusion proof of STEP's leaf (JSON)")
    action.add_argument("--check-proof", type=Path, metavar="FILE",
                        help="verify an inclusion proof file against --root or this ledger's root")
    action.add_argument("--consistency", nargs=2, metavar=("OLD_SIZE", "OLD_ROOT_HEX"),
                        help="check that a published earlier root is a prefix of the current one")
    parser.add_argument("--prefix", action="store_true",
                        help="with --verify: accept a ledger that lags steps.jsonl (a killed run)")
    parser.add_argument("--size", type=int, help="with --prove: prove against the root of SIZE leaves")
    parser.add_argument("--root", help="with --check-proof: the root you trust (hex)")
    parser.add_argument("--out", type=Path, help="write the proof JSON here (default: stdout)")
    return parser


def _emit(obj: object, out: Path | None) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)


def _open(run: Path) -> Ledger:
    if not run.is_dir():
        raise LedgerFileError(f"{run} is not a run directory")
    return Ledger(run / LEDGER_FILE)


def _info(ledger: Ledger) -> None:
    print(f"ledger  {ledger.path}")
    print(f"size    {ledger.size}")
    print(f"root    {ledger.root().hex()}")


def _verify(run_path: Path, ledger: Ledger, prefix: bool) -> None:
    run = RunDirectory(run_path)
    manifest = run.read_manifest()
    records = run.read_steps()
    try:
        ledger.check_records(records, source=str(run.steps_path), complete=not prefix)
    except LedgerMismatchError as err:
        if ledger.size < len(records) and not prefix:
            raise LedgerMismatchError(
                f"{err}. HINT: resume the run (trainer.fit(..., ckpt_path=...)) to catch the "
                "ledger up, or pass --prefix to accept a ledger that lags (a killed run)."
            ) from err
        raise
    print(f"ok      {ledger.size} leaves match {run.steps_path.name} ({len(records)} records) "
          "and their stored hashes")
    published = manifest["ledger"] if "ledger" in manifest else None
    if published is not None:
        size = published["size"]
        ledger.check_root(size, parse_root(published["root"], "manifest ledger.root"),
                          source=f"the root published in {run.manifest_path.name}")
        print(f"ok      root of the first {size} leaves matches {run.manifest_path.name}")
    if manifest["final_state_digest"] is not None:
        claims = check_run_claims(run, manifest, records)
        print(f"ok      the finished run's claims hold: {claims.describe()}")
    else:
        print(f"note    {run.manifest_path.name} claims no final state: the run did not finish "
              "(killed or still training)")
    _info(ledger)


def _prove(ledger: Ledger, step: int, size: int | None, out: Path | None) -> None:
    proof = ledger.prove_inclusion(step, size)
    proof.verify(ledger.root(proof.size))  # never hand out a proof that does not verify
    _emit(proof.to_json(), out)


def _check_proof(ledger: Ledger, file: Path, root_hex: str | None) -> None:
    proof = LeafProof.from_json(load_json(file))
    root = parse_root(root_hex, "--root") if root_hex else ledger.root(min(proof.size, ledger.size))
    leaf = proof.verify(root)
    print(f"ok      the leaf of step {leaf.step} is included in the ledger of {proof.size} leaves "
          f"with root {root.hex()}")


def _consistency(ledger: Ledger, old_size_text: str, old_root_hex: str, out: Path | None) -> None:
    try:
        old_size = int(old_size_text)
    except ValueError as err:
        raise LedgerError(f"OLD_SIZE {old_size_text!r} is not an integer") from err
    old_root = parse_root(old_root_hex, "OLD_ROOT_HEX")
    size, root = ledger.size, ledger.root()
    proof = ledger.prove_consistency(old_size)
    verify_consistency(proof, old_size, old_root, size, root)
    if out is not None:
        _emit(consistency_to_json(proof, old_root, root), out)
    print(f"ok      root {old_root.hex()} of {old_size} leaves is a prefix of root {root.hex()} of "
          f"{size} leaves")


def main(argv: list[str]) -> int:
    return run_command("lightning-zk ledger", _main, argv, status=1, prefix="FAILED: ")


def _main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    misplaced = [flag for flag, given, allowed in (
        ("--size", args.size is not None, args.prove is not None),
        ("--root", args.root is not None, args.check_proof is not None),
        ("--prefix", args.prefix, args.verify),
        ("--out", args.out is not None, args.prove is not None or args.consistency is not None),
    ) if given and not allowed]
    if misplaced:
        parser.print_usage(sys.stderr)
        print(f"lightning-zk ledger: {misplaced[0]} does not go with this action", file=sys.stderr)
        return 2
    with _open(args.run) as ledger:
        if args.verify:
            _verify(args.run, ledger, args.prefix)
        elif args.prove is not None:
            _prove(ledger, args.prove, args.size, args.out)
        elif args.check_proof is not None:
            _check_proof(ledger, args.check_proof, args.root)
        elif args.consistency is not None:
            _consistency(ledger, *args.consistency, args.out)
        else:
            _info(ledger)
    return 0
