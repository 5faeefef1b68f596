"""btembed dedup: groups of near-duplicate images in an indexed folder."""
from __future__ import annotations

from . import print_json, say


def register(sub) -> None:
    """Add the dedup subcommand."""
    p = sub.add_parser("dedup", help="find groups of near-duplicate images in an indexed folder",
                       description="Group images whose cosine similarity reaches --threshold (transitively) using "
                                   "the folder's search index; files with identical bytes are always grouped.")
    p.add_argument("folder", metavar="DIR", help="the indexed folder")
    p.add_argument("--threshold", type=float, default=0.95, help="cosine similarity to count as a duplicate")
    p.add_argument("-k", type=int, default=16, help="neighbours examined per image (default 16)")
    p.add_argument("--db", default=None, help="index folder, when DIR was indexed with --db")
    p.add_argument("--json", action="store_true", help='print {"groups": [[{"path", "score"}, ...], ...]}')
    p.set_defaults(run=run)


def run(args) -> int:
    """Find groups and print them (first path of each group is its representative)."""
    from ..search.dedup import find_duplicates
    from ..errors import BtembedError
    from ..search import ImageIndex

    if not -1.0 <= args.threshold <= 1.0:
        raise BtembedError("--threshold is a cosine similarity between -1 and 1")
    if args.k < 1:
        raise BtembedError("-k must be at least 1")
    index = ImageIndex.open(args.folder, db=args.db)
    try:
        groups = find_duplicates(index, threshold=args.threshold, k=args.k)
    finally:
        index.close()
    if args.json:
        print_json({"groups": [[h.to_dict() for h in g] for g in groups]})
    else:
        for g in groups:
            print(g[0].path)
            for h in g[1:]:
                print(f"  {h.score:.4f}  {h.path}")
    noun = "group" if len(groups) == 1 else "groups"
    say(f"{len(groups)} {noun} of duplicates, {sum(len(g) for g in groups)} files (threshold {args.threshold})")
    return 0
