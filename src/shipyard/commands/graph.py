"""`shipyard graph`: draw the model graph (SVG, DOT or HTML) with op types and tensor shapes."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("graph", help="draw the model graph to .svg, .dot or .html")
    p.add_argument("model")
    p.add_argument("-o", "--output", type=Path, required=True, help="FILE.svg, FILE.dot or FILE.html")
    p.add_argument("--depth", type=int, help="collapse nodes into name scopes this deep (default: only when large, "
                                           "by name scope or by blocks such as block_12, whichever leaves a picture)")
    p.add_argument("--max-nodes", type=int, default=300, help="collapse automatically above this many nodes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_graph)


def cmd_graph(args) -> int:
    from shipyard.errors import UsageError
    from shipyard.graph_view import draw

    if args.depth is not None and args.depth < 1:
        raise UsageError("--depth must be at least 1")
    info = draw(args.model, args.output, args.depth, args.max_nodes)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        collapsed = (f", collapsed to {info['drawn_nodes']} at depth {info['depth']}" if info["depth"] else
                     f", collapsed to {info['drawn_nodes']} by blocks" if info["collapsed"] else "")
        from shipyard.report.numbers import plural

        print(f"{plural(info['nodes'], 'node')}{collapsed} drawn to {info['output_file']}")
    return 0
