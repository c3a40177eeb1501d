"""`shipyard view`: open the model in Netron, served on localhost."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("view", help="open the model in Netron on localhost")
    p.add_argument("model")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only serve; print the address")
    p.set_defaults(func=cmd_view)


def cmd_view(args) -> int:
    from pathlib import Path

    from shipyard.deps import require
    from shipyard.errors import InputError, UsageError

    path = Path(args.model)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    netron = require("netron", "Viewing a model")
    if path.is_dir():  # a SavedModel / TF.js directory: Netron opens its graph file
        candidates = [path / "saved_model.pb", path / "model.json"]
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            raise UsageError(f"{args.model}: a directory without saved_model.pb or model.json")
    try:
        address = netron.serve(str(path), None, ("127.0.0.1", args.port), browse=not args.no_browser)
    except OSError as exc:
        raise UsageError(f"cannot serve on 127.0.0.1:{args.port} ({exc})", hint="pick another --port") from exc
    host, port = address if isinstance(address, tuple) else ("127.0.0.1", args.port)
    try:  # Ctrl-C may come as soon as Netron says it serves, before or during our own line
        print(f"Netron is serving {path} at http://{host}:{port} (Ctrl-C to stop)", flush=True)
        netron.wait()
    except KeyboardInterrupt:
        pass
    return 0
