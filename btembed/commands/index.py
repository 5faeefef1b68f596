"""btembed index: bring a folder's catalog and search index up to date (new, changed, renamed, deleted files)."""
from __future__ import annotations

from ..errors import BtembedError
from . import add_model_args, print_json, say, seconds_at_least_zero


def register(sub) -> None:
    """Add the index subcommand."""
    p = sub.add_parser("index", help="index a folder of images for search and dedup (incremental)",
                       description="Walk DIR recursively, embed new and changed images, reuse vectors of renamed "
                                   "or copied files, forget deleted ones and update the FAISS index. The index "
                                   "lives in DIR/.btembed/ unless --db says otherwise. Exit status 0 when the run "
                                   "completed (unreadable files and folders are listed), 1 when nothing could be "
                                   "done. Started by torchrun (`torchrun --nproc_per_node=N -m btembed index DIR`, "
                                   "--nnodes for several machines sharing DIR and --db), the embedding is spread "
                                   "over the ranks, each on its own GPU (cuda:LOCAL_RANK; gloo on CPU): rank 0 "
                                   "plans, merges the ranks' shards and builds the search index; a rerun keeps "
                                   "every shard that was finished.")
    p.add_argument("folder", metavar="DIR", help="folder of images")
    p.add_argument("--db", default=None, help="index folder (default DIR/.btembed); use for read-only photo folders")
    p.add_argument("--max-memory", default=None,
                   help="RAM the search index may use, e.g. 4G (default: half of this machine's memory); "
                        "above it vectors are compressed with IVF-PQ")
    p.add_argument("--retry-errors", action="store_true", help="try again files that failed before, even unchanged")
    p.add_argument("--rebuild", action="store_true",
                   help="embed everything again into a new catalog, switched to when complete (needed to switch "
                        "models); searches meanwhile use the old one")
    p.add_argument("--prune", action="store_true",
                   help="forget cataloged files even when every one of them is gone (normally kept: an unmounted "
                        "disk looks like an empty folder)")
    p.add_argument("--on-disk", action="store_true",
                   help="build the search index as IVF-PQ with on-disk inverted lists (memory-mapped), whatever "
                        "the size (it is chosen by itself when even compressed codes would not fit --max-memory)")
    p.add_argument("--vector-files-above", default=None, metavar="SIZE",
                   help="keep vectors in per-shard float16 files (memory-mapped) instead of the catalog once they "
                        "pass SIZE (default 4G; 0: always)")
    p.add_argument("--wait", type=seconds_at_least_zero, default=0.0, metavar="SECONDS",
                   help="wait this long for another running index of the same folder (default: exit at once)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_model_args(p)
    p.set_defaults(run=run)


def run(args) -> int:
    """Index, then summarise on stderr (and as JSON on stdout with --json)."""
    import sys

    from ..search import IndexOptions, index_folder
    from ..search.ann import parse_size
    from ..search.ranks import torchrun_ranks

    above = args.vector_files_above
    opts = IndexOptions(model=args.model, revision=args.revision, db=args.db, max_memory=args.max_memory,
                        retry_errors=args.retry_errors, rebuild=args.rebuild, prune=args.prune, wait=args.wait,
                        batch_size=args.batch_size, workers=args.workers, backend=args.backend,
                        device=args.device, precision=args.precision,
                        progress=None if sys.stderr.isatty() else False, on_disk=args.on_disk,
                        vector_files_above=0 if above in ("0", 0) else parse_size(above))
    if torchrun_ranks() is not None:
        return _run_ranked(args, opts)
    report = index_folder(args.folder, opts, say=say)
    return _summarise(report, args)


def _run_ranked(args, opts) -> int:
    """Under torchrun: rank 0 runs the index and hands out shards, the other ranks embed what they are given."""
    from ..search import index_folder
    from ..search.ranks import RankGroup
    from ..search.shards import serve_rank

    group = RankGroup.join(args.device)
    opts.ranks = group
    try:
        if not group.is_main:
            return serve_rank(group, opts)
        try:
            report = index_folder(args.folder, opts, say=say)
        finally:
            group.tell_done()  # the other ranks wait for work until told there is none
        return _summarise(report, args)
    finally:
        group.leave()


def _summarise(report, args) -> int:
    """The run's summary on stderr (and as JSON on stdout with --json); the exit status (see docs/index.md)."""
    from ..names import shown

    for f in report.failures:
        if "folder" in f:
            say(f"  could not list folder {shown(f['folder'] or '.')}: {f['error']}; its {f['kept']} indexed files "
                "are kept")
        else:
            say(f"  could not index {shown(f['path'])}: {f['error']}")
    for f in report.skipped:
        say(f"  skipped {shown(f['path'])}: {f['reason']}")
    skipped = f", {len(report.skipped)} skipped" if report.skipped else ""
    skipped += f", {report.retried} retried" if report.retried else ""
    skipped += f", {report.kept} kept though gone" if report.kept else ""
    say(f"indexed {report.total} images in {report.seconds:.1f} s ({report.new} new, {report.updated} updated, "
        f"{report.deleted} deleted, {report.unchanged} unchanged, {report.reused} reused, "
        f"{report.embedded} embedded, {report.failed} failed{skipped}); index {report.tier or 'empty'} in "
        f"{shown(report.store)}")
    if args.json:
        print_json(report.to_dict())
    if report.total == 0 and report.failed:
        # Every candidate failed: nothing could be done (issue 28's rule), though each one is listed above.
        raise BtembedError(f"nothing in {shown(args.folder)} could be indexed: all {report.failed} failed (listed "
                           "above); fix or remove them and run again")
    if report.total == 0 and not report.failed:
        say(f"no image files found in {shown(args.folder)}")
    return 0
