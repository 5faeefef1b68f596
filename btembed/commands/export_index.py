"""btembed export-index: an indexed folder's vectors and file facts as img_emb/*.npy + metadata/*.parquet|jsonl."""
from __future__ import annotations

from . import count_at_least, print_json, say


def register(sub) -> None:
    """Add the export-index subcommand."""
    p = sub.add_parser("export-index", help="export an index's vectors and metadata for autofaiss / clip-retrieval",
                       description="Write OUT/img_emb/img_emb_N.npy (vectors, float16 as stored) and "
                                   "OUT/metadata/metadata_N.parquet (or .jsonl) with image_path, size, mtime_ns, "
                                   "hash and model: row k of one is row k of the other (the layout clip-retrieval's "
                                   "inference writes and autofaiss reads). Parquet needs pyarrow "
                                   "(pip install 'btembed[parquet]').")
    p.add_argument("folder", metavar="DIR", help="the indexed folder (or its index folder)")
    p.add_argument("--out", required=True, metavar="FOLDER",
                   help="new or empty folder to write (a new name ending in a file suffix such as .jsonl is "
                        "refused: the export is a folder of file pairs)")
    p.add_argument("--format", default="parquet", choices=("parquet", "jsonl"), help="metadata format")
    p.add_argument("--db", default=None, help="index folder, when DIR was indexed with --db")
    p.add_argument("--rows-per-file", type=count_at_least(1), default=1_000_000,
                   help="rows per img_emb/metadata pair (default 1000000)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(run=run)


def run(args) -> int:
    """Export, then summarise."""
    from dataclasses import asdict

    from ..names import shown
    from ..search.export_index import export_index

    report = export_index(args.folder, args.out, args.format, db=args.db, rows_per_file=args.rows_per_file)
    say(f"exported {report.rows} vectors ({report.dim}-d {report.dtype}, model {report.model}) in "
        f"{len(report.files)} file pair(s) to {shown(report.out)}")
    if args.json:
        print_json(asdict(report))
    return 0
