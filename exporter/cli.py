"""Command line: the argparse tree and the dispatch of ``run`` (exporter.service),
``replay`` (exporter.replay), ``demo``, ``verify``, ``retention``, ``export`` and
``witness`` (exporter.transparency.witness).

The settings object is built once, from flags and ``VLLM_AUDIT_*``
environment variables (:mod:`exporter.settings`); bad configuration exits 2
with one readable line before anything starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import PROG, __version__
from .settings import SettingsError, add_options, build as build_settings, loki_settings, pricing, resolve



def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Audit trail, Prometheus metrics and Loki shipping for vLLM.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="tail vLLM's log (and the middleware's), serve /metrics",
                         description="Tail, correlate, archive, serve /metrics and /health.")
    add_options(run, "run")
    replay = sub.add_parser("replay", help="read whole log files once, write records, summarise",
                            description="Backfill: read each file from start to end, write the "
                                        "records to the archive (and Loki), print a summary.")
    replay.add_argument("files", nargs="*", metavar="FILE", help="vLLM log / middleware JSONL files")
    add_options(replay, "replay")
    demo = sub.add_parser("demo", help="replay the bundled real vLLM capture and show the results")
    demo.add_argument("--archive-dir", type=Path, default=None,
                      help="where the demo archive goes (default: a new temporary directory)")
    demo.add_argument("--web.listen-address", dest="listen_address", default="127.0.0.1:9400",
                      help="where /metrics is served during the demo (default: 127.0.0.1:9400)")
    demo.add_argument("--serve", action="store_true",
                      help="keep serving /metrics after the summary, until Ctrl-C")
    demo.add_argument("--no-alerts", action="store_true",
                      help="skip the Prometheus/Alertmanager part even if installed")
    verify = sub.add_parser("verify", help="check the archive's hash chain and manifests, or (with "
                            "--public-key) its signed transparency log, or a proof",
                            description="Without --public-key: the HMAC chain and manifests (needs the "
                                        "key). With --public-key: the Merkle tree, signed checkpoints, "
                                        "witnesses and gaps, with public keys only. With --proof: one "
                                        "proof from prove (or an export's proof file), stand-alone.")
    verify.add_argument("archive_dir", metavar="DIR", nargs="?")
    verify.add_argument("--proof", default=None, metavar="FILE",
                        help="check a proof from `prove` or an export's FILE.proof.json (no DIR)")
    verify.add_argument("--format", dest="output_format", choices=("text", "json"), default="text",
                        help="with --public-key or --proof: json is a report to file")
    add_options(verify, "verify")
    retention = sub.add_parser("retention", help="compress or delete old archive days now")
    retention.add_argument("archive_dir", metavar="DIR")
    retention.add_argument("--compress-after-days", type=int, default=None, metavar="DAYS")
    retention.add_argument("--delete-after-days", type=int, default=None, metavar="DAYS")
    add_options(retention, "retention")
    alert_log = sub.add_parser("alert-log", help="receive Alertmanager notifications: print, "
                               "keep, forward (the stack's default receiver)",
                               description="Print every Alertmanager notification (one line per "
                               "alert), optionally keep it as JSON and forward it to a webhook, "
                               "Slack or e-mail.")
    add_options(alert_log, "alert-log")
    keygen = sub.add_parser("keygen", help="make a signing key for signed checkpoints",
                            description="Write DIR/signing.key (0600, keep it secret) and "
                                        "DIR/signing.pub (the verifier key auditors get).")
    keygen.add_argument("--out", required=True, metavar="DIR", help="directory for signing.key and signing.pub")
    keygen.add_argument("--name", default=None, help="key name (default: <hostname>-vllm-audit)")
    keygen.add_argument("--witness", action="store_true",
                        help="a witness key (cosignature/v1) instead of a log signing key")
    keygen.add_argument("--keep-existing", action="store_true",
                        help="an existing DIR/signing.key is kept (exit 0, its signing.pub printed) "
                             "instead of refused: an init step run at every start")
    prove = sub.add_parser("prove", help="print a stand-alone JSON proof that one record is in the signed log",
                           description="The record, its Merkle inclusion proof, the signed checkpoint "
                                       "with its witness cosignatures and the key epochs up to it: "
                                       "`verify --proof FILE --public-key signing.pub` checks it alone.")
    prove.add_argument("request_id", metavar="REQUEST_ID")
    prove.add_argument("--seq", type=int, default=None, help="which record, when a client reused the id")
    add_options(prove, "prove")
    witness = sub.add_parser(
        "witness", help="run a C2SP tlog-witness that cosigns another host's checkpoints",
        description="Serve POST /add-checkpoint (c2sp.org/tlog-witness): cosign a log's checkpoint "
                    "only if it is consistent with the latest one this witness cosigned.")
    add_options(witness, "witness")
    export = sub.add_parser("export", help="export records for auditors (CSV or JSONL)")
    _add_export_args(export)
    add_options(export, "export")
    return parser


def _add_export_args(p: argparse.ArgumentParser) -> None:
    # The flag names are pinned by the export contract (README, "Export");
    # --archive-dir and the HMAC key come from the option table.
    p.add_argument("--from", dest="time_from", required=True, metavar="T",
                   help="start time, RFC 3339 or YYYY-MM-DD (inclusive)")
    p.add_argument("--to", dest="time_to", required=True, metavar="T",
                   help="end time, RFC 3339 or YYYY-MM-DD (exclusive)")
    p.add_argument("--user", default=None, help="only this user")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--grep", default=None, metavar="TEXT", help="only records whose prompt or output contains TEXT")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    p.add_argument("--bom", action="store_true", help="CSV: start with a UTF-8 byte-order mark (Excel)")
    p.add_argument("--output", "-o", default=None, metavar="FILE",
                   help="write here (and FILE.sha256 / FILE.hmac beside it); default stdout")
    p.add_argument("--source", choices=("archive", "loki"), default="archive")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            from .service import serve
            return serve(build_settings("run", args, os.environ))
        if args.command == "replay":
            from .replay import cmd_replay
            return cmd_replay(build_settings("replay", args, os.environ))
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(args)
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "prove":
            from .transparency.proof import prove_main
            return prove_main(str(resolve("prove", args, os.environ)["archive_dir"]),
                              args.request_id, args.seq)
        if args.command == "keygen":
            from .transparency.keys import keygen_main
            return keygen_main(args.out, args.name, witness=args.witness,
                               keep_existing=args.keep_existing)
        if args.command == "retention":
            return cmd_retention(args)
        if args.command == "alert-log":
            from .alertlog import main as alert_log_main
            from .settings import alert_log_options
            return alert_log_main(*alert_log_options(args, os.environ))
        if args.command == "witness":
            return cmd_witness(args)
        if args.command == "export":
            from .compliance.export import export_main
            opts = resolve("export", args, os.environ)
            return export_main(
                ts_from=args.time_from, ts_to=args.time_to,
                archive_dir=str(opts["archive_dir"]),
                user=args.user, model=args.model, grep=args.grep, fmt=args.format, bom=args.bom,
                output=args.output, source=args.source, loki_url=opts["loki_url"],
                loki=loki_settings(opts) if args.source == "loki" else None,
                hmac_key_file=opts["hmac_key_file"], hmac_key_env=opts["hmac_key"],
                pricing=pricing(opts))
    except SettingsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def cmd_verify(args) -> int:
    """Check the chain, and the end of the newest file against the exporter's
    checkpoint (cutting whole records off the end is otherwise invisible from
    inside the archive): exit 3 when there is no checkpoint to trust."""
    from .compliance.verify import verify_main
    opts = resolve("verify", args, os.environ)
    if args.proof is not None:
        if not opts["public_key"]:
            raise SettingsError("verify --proof: give --public-key FILE (the log's signing.pub)")
        from .transparency.proof import verify_proof_main
        return verify_proof_main(args.proof, public_key=str(opts["public_key"]),
                                 witness_keys=opts["witness_keys"], min_witnesses=opts["min_witnesses"],
                                 fmt=args.output_format)
    if opts["public_key"]:
        from .transparency.audit import audit_main
        code = audit_main(args.archive_dir, public_key=str(opts["public_key"]),
                          witness_keys=opts["witness_keys"], min_witnesses=opts["min_witnesses"],
                          max_gap=opts["max_gap"], tsa_cert=opts["tsa_cert"] and str(opts["tsa_cert"]),
                          fmt=args.output_format)
        if code != 0 or not (opts["hmac_key_file"] or opts["hmac_key"]):
            return code
        # A key was given too: the HMAC chain is checked as well.
    if not args.archive_dir:
        raise SettingsError("verify: give the archive DIR")
    return verify_main(args.archive_dir, hmac_key_file=opts["hmac_key_file"],
                       hmac_key_env=opts["hmac_key"],
                       state_dir=opts["state_dir"] and str(opts["state_dir"]))


def cmd_witness(args) -> int:
    from .settings import witness_settings
    from .transparency.witness import Witness, init_key
    from .transparency.witness_http import serve
    from exporter.durable import DirError, usable_dir
    ws = witness_settings(args, os.environ)
    if ws.init_key:
        try:
            signer = init_key(ws.key_file, ws.name)
        except (FileExistsError, DirError, OSError) as exc:
            raise SettingsError(f"--init-key: {exc}") from None
        print(signer.verifier.text())
        return 0
    try:
        usable_dir(ws.state_dir, "--state-dir", create=True, write=True)
        witness = Witness(ws.signer, ws.logs, ws.state_dir)
    except (DirError, ValueError) as exc:
        raise SettingsError(str(exc)) from None
    try:
        server = serve(witness, ws.host, ws.port)
    except OSError as exc:
        raise SettingsError(f"--listen {ws.host}:{ws.port}: {exc.strerror or exc}") from None
    import signal

    def stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    print(f"witness {witness.signer.verifier.text()} on http://{host}:{port} for "
          f"{', '.join(sorted(ws.logs))}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_retention(args) -> int:
    from .chain import KeyLoadError, load_key
    from exporter.durable import DirError, usable_dir
    from .compliance.retention import retention_main
    from .archive.layout import loki_keep_from
    from .loki.state import load_position
    opts = resolve("retention", args, os.environ)
    try:
        usable_dir(Path(args.archive_dir), "retention DIR", write=True)
    except DirError as exc:
        raise SettingsError(str(exc)) from None
    try:
        key = load_key(opts["hmac_key_file"], opts["hmac_key"])
    except KeyLoadError as exc:
        raise SettingsError(f"--hmac-key-file: {exc}") from None
    keep = None
    state_dir = Path(opts["state_dir"]) if opts["state_dir"] else Path(args.archive_dir) / ".state"
    loki_state = state_dir / "loki.json"
    if loki_state.exists():  # Loki is in use: keep what it has not shipped
        keep = loki_keep_from(load_position(loki_state)[0].file)
    return retention_main(args.archive_dir, compress_after_days=args.compress_after_days,
                          delete_after_days=args.delete_after_days, keep_from_day=keep,
                          out=sys.stdout, key=key)


if __name__ == "__main__":
    sys.exit(main())
