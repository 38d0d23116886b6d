"""nvlm-deploy serve: start tritonserver on a packaged repository, keep it serving; Ctrl-C stops it.

A dead Python stub or server is reported and the server restarted (serve.supervisor); SIGTERM and
SIGINT stop it cleanly; if serve itself is killed, tritonserver gets SIGTERM (serve.server)."""

import argparse

HELP = "start tritonserver (system or nvidia-pytriton's) on a model repository, bound to 127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", help="model repository written by `nvlm-deploy package`")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    net.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    net.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    net.add_argument("--metrics-port", type=int, default=None,
                     help="serve Prometheus metrics on this port (on --host); default: no metrics endpoint")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--timeout", type=float, default=600, help="seconds to wait for readiness (default 600)")
    run_group.add_argument("--log", default=None, help="server log file (default next to the repository)")
    run_group.add_argument("--print-command", action="store_true", help="print the command line and exit")
    run_group.add_argument("--verify", action="store_true",
                           help="check every file of the repository and of the stages it serves against the digests "
                                "their manifests record before starting (sizes are always checked)")
    run_group.add_argument("--max-restarts", type=int, default=5,
                           help="restarts after a dead Python stub or server before giving up (default 5; 0: exit "
                                "on the first fault)")


def run(args: argparse.Namespace) -> int:
    import functools

    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.serve import server as srv
    from nvlm_deploy.serve.launch import check_no_strays, check_paths, check_repository
    from nvlm_deploy.serve.supervisor import Supervisor

    if args.max_restarts < 0:
        raise DeployError(f"--max-restarts must be >= 0, got {args.max_restarts}.")
    manifest = check_repository(args.repo)
    check_paths(args.repo)
    check_no_strays(args.repo, manifest)
    from nvlm_deploy.contracts.target import verify_repository

    verify_repository(args.repo, hashes=args.verify, log=print if args.verify else None)
    # the CPU runtime merges every rank in one process; only GPU engines run one server per rank
    world_size = manifest.world_size if manifest.runtime == "gpu" else 1
    if args.print_command:
        print(" ".join(srv.launch_command(args.repo, grpc_port=args.grpc_port, http_port=args.http_port,
                                          host=args.host, world_size=world_size, metrics_port=args.metrics_port)))
        return 0
    print(f"starting tritonserver on {args.repo} ({manifest.runtime} runtime, world size {world_size})", flush=True)
    stop = _stop_on_signals()
    start = functools.partial(srv.start_server, args.repo, grpc_port=args.grpc_port, http_port=args.http_port,
                              host=args.host, log_path=args.log, timeout=args.timeout, world_size=world_size,
                              metrics_port=args.metrics_port)
    return Supervisor(start, log=lambda line: print(line, flush=True), max_restarts=args.max_restarts).run(stop)


def _stop_on_signals() -> list:
    """Ctrl-C (SIGINT) and SIGTERM both ask for a clean stop; a background shell job ignores SIGINT
    unless the handler is installed explicitly."""
    import signal

    received: list = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: received.append(signal.Signals(number).name))
    return received
