"""btembed search: the images of an indexed folder most similar to a query image."""
from __future__ import annotations

from . import count_at_least, print_json, say


def register(sub) -> None:
    """Add the search subcommand."""
    p = sub.add_parser("search", help="find the images of an indexed folder most similar to a query image",
                       description="Rank the images of an indexed folder by cosine similarity to QUERY (an image "
                                   "file, inside the folder or not).")
    p.add_argument("folder", metavar="DIR", help="the indexed folder")
    p.add_argument("query", metavar="QUERY", help="query image file")
    p.add_argument("-k", type=count_at_least(1), default=10, help="number of results (default 10)")
    p.add_argument("--db", default=None, help="index folder, when DIR was indexed with --db")
    p.add_argument("--json", action="store_true",
                   help='print {"query", "results": [{"path", "score"}]} (+ "path_bytes" for names that are not '
                        "UTF-8)")
    p.set_defaults(run=run)


def run(args) -> int:
    """Search and print ranked paths with scores."""
    from ..images import check_readable
    from ..names import path_fields
    from ..search import ImageIndex

    check_readable(args.query, what="the query")
    index = ImageIndex.open(args.folder, db=args.db)
    try:
        hits = index.search(args.query, k=args.k)
    finally:
        index.close()
    if args.json:
        print_json({**path_fields(args.query, "query"), "results": [h.to_dict() for h in hits]})
    else:
        for h in hits:
            print(f"{h.score:.4f}  {h.path}")
        if not hits:
            say("the index is empty")
    return 0
