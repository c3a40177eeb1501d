"""`shipyard serve`: serve a model repository over TF Serving and KServe v2 REST + gRPC."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model repository (TF Serving + KServe v2, REST + gRPC)")
    p.add_argument("repo", type=Path, help="REPO/<model>/<version>/<model file or directory>")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--rest-port", type=int, default=8501, help="REST port (0: any free port)")
    p.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (0: any free port; -1: no gRPC)")
    p.add_argument("--auth-token-file", type=Path, help="require 'Authorization: Bearer <token in this file>'")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body accepted")
    p.add_argument("--threads", type=int, help="engine threads per model version (default: the engine's)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="repository poll interval (events act at once)")
    p.add_argument("--no-access-log", action="store_true", help="no per-request JSON log lines on stderr")
    p.add_argument("--ready-file", type=Path,
                   help="write the bound ports here (JSON) once listening and every model that can load has loaded")
    p.add_argument("--metrics-open", action="store_true",
                   help="serve /metrics without the token (for Prometheus); everything else still needs it")
    p.add_argument("--workers", type=int, default=1, help="processes serving the same ports (default 1)")
    p.add_argument("--share-weights", action="store_true",
                   help="TFLite: run the builtin kernels on the memory-mapped file so all workers share one copy "
                        "of the weights (XNNPACK, the default, is faster but copies them per process)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="serve on Ray Serve (KServe v2 REST): a local Ray without ADDRESS, or the cluster at HOST:PORT")
    p.add_argument("--replicas", type=int, help="--ray: replicas per model (REPO/<model>/ray.json may autoscale)")
    p.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its workers
    p.add_argument("--json", action="store_true", help="log lines are JSON already; accepted for symmetry")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from shipyard import progress
    from shipyard.errors import UsageError
    from shipyard.serve.server import ServeOptions, read_token, serve

    progress.off()  # a server's stages never end: no spinner beside its log lines

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.max_request_mb <= 0:
        raise UsageError("--max-request-mb must be positive")
    if args.ray is not None:  # Ray Serve replicas: serve/ray_serve.py
        from shipyard.serve.ray_serve import serve_ray

        return serve_ray(args.repo, args.ray or None, args.replicas, args.host, args.rest_port,
                         read_token(args.auth_token_file) if args.auth_token_file else None,
                         int(args.max_request_mb * (1 << 20)), args.threads, args.poll_seconds, args.ready_file)
    opts = ServeOptions(
        repo=args.repo, host=args.host, rest_port=args.rest_port,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        auth_token=read_token(args.auth_token_file) if args.auth_token_file else None,
        max_request_bytes=int(args.max_request_mb * (1 << 20)), threads=args.threads,
        poll_seconds=args.poll_seconds, access_log=not args.no_access_log, ready_file=args.ready_file,
        workers=args.workers, share_weights=args.share_weights, auth_token_file=args.auth_token_file,
        worker_fd=args.worker_fd, metrics_open=args.metrics_open,
    )
    return serve(opts)
