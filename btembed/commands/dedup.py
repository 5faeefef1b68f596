"""btembed dedup: groups of near-duplicate images in an indexed folder, as text, JSON, an HTML page or actions."""
from __future__ import annotations

from . import count_at_least, print_json, say


def register(sub) -> None:
    """Add the dedup subcommand."""
    p = sub.add_parser("dedup", help="find groups of near-duplicate images in an indexed folder",
                       description="Group near-duplicate images of an indexed folder. Groups never chain: each "
                                   "image joins the kept image it is most similar to, and only when it is within "
                                   "--threshold of it; byte-identical files always group; blank (one-colour) "
                                   "images are listed apart. Nothing is ever deleted or moved.")
    p.add_argument("folder", metavar="DIR", help="the indexed folder")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine to the kept image to count as a duplicate (default: the model's calibrated "
                        "threshold, else 0.95)")
    p.add_argument("--no-pixel-check", dest="pixel_check", action="store_false",
                   help="group on the embedding alone: faster, but two different photos the model sees as one kind "
                        "of thing (two textures, an apple and an orange) can group; by default a pair must also "
                        "pass the pixel check (its small pictures agree: one photo, edited)")
    p.add_argument("-k", type=count_at_least(1), default=16, help="neighbours examined per image (default 16)")
    p.add_argument("--db", default=None, help="index folder, when DIR was indexed with --db")
    p.add_argument("--keep", choices=("largest", "oldest"), default=None,
                   help="which copy of a group is kept: most pixels (then bytes), or oldest file (default largest); "
                        "ties go to the older file, then the name without a copy marker such as ' (1)' or "
                        "' copy'")
    p.add_argument("--json", action="store_true",
                   help='print {"groups": [{"members": [{"path", "score", "exact", "kept"}]}], "blank": [...]}')
    p.add_argument("--html", metavar="REPORT.html", default=None,
                   help="also write one self-contained HTML page of the groups (thumbnails inline)")
    p.add_argument("--actions", choices=("keep-largest", "keep-oldest"), default=None,
                   help="print (or write with -o) the list of what to keep and what could be removed; deletes "
                        "nothing")
    p.add_argument("-o", "--output", metavar="ACTIONS.json", default=None, help="where --actions writes its list")
    p.set_defaults(run=run)


def run(args) -> int:
    """Find groups, then print them (text or --json), write --html, list --actions."""
    import json
    import os

    from ..errors import BtembedError
    from ..search import ImageIndex
    from ..search.dedup import find_duplicates

    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise BtembedError("--threshold is a cosine similarity between -1 and 1")
    if args.output and not args.actions:
        raise BtembedError("-o names the file of --actions; add --actions keep-largest or keep-oldest")
    if args.actions and args.keep and args.actions != f"keep-{args.keep}":
        raise BtembedError(f"--keep {args.keep} and --actions {args.actions} ask for different copies to keep; "
                           "give one of them")
    keep = args.actions.removeprefix("keep-") if args.actions else args.keep or "largest"
    index = ImageIndex.open(args.folder, db=args.db)
    try:
        found = find_duplicates(index, args.threshold, k=args.k, keep=keep, pixel_check=args.pixel_check)
    finally:
        index.close()
    root = os.fspath(index.root)
    if found.threshold_source != "--threshold":
        say(found.threshold_source)
    if args.html:
        from ..search.dedup_report import write_report

        say(f"wrote {write_report(found, root, args.html)}")
    if args.actions:
        doc = found.actions(root)
        if args.output:
            try:
                with open(args.output, "w", encoding="utf-8") as f:
                    json.dump(doc, f, indent=2)
                    f.write("\n")
            except OSError as e:
                raise BtembedError(f"cannot write {args.output} ({e.strerror or e}); choose another -o") from None
            say(f"wrote {args.output}: keep {len(doc['groups'])}, could remove {doc['remove_count']} files "
                "(nothing was deleted)")
        else:
            print_json(doc)
    elif args.json:
        print_json(found.to_dict(root))
    elif not args.html:
        for group in found.groups:
            print(os.path.join(root, group[0].path))
            for m in group[1:]:
                print(f"  {m.score:.4f}{' =' if m.exact else '  '} {os.path.join(root, m.path)}")
    noun = "group" if len(found.groups) == 1 else "groups"
    say(f"{len(found.groups)} {noun} of duplicates, {sum(len(g) for g in found.groups)} files (threshold "
        f"{found.threshold}{'' if found.pixel_check else ', no pixel check'}, keep the {found.keep})" + (f"; {len(found.blank)} blank images apart" if found.blank
                                                       else ""))
    return 0
