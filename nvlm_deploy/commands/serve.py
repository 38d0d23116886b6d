"""nvlm-deploy serve: start tritonserver on a packaged repository; Ctrl-C stops it."""

import argparse

HELP = "start tritonserver (system or nvidia-pytriton's) on a model repository, bound to 127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", help="model repository written by `nvlm-deploy package`")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    net.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    net.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--timeout", type=float, default=600, help="seconds to wait for readiness (default 600)")
    run_group.add_argument("--log", default=None, help="server log file (default next to the repository)")
    run_group.add_argument("--print-command", action="store_true", help="print the command line and exit")


def run(args: argparse.Namespace) -> int:
    import time

    from nvlm_deploy.serve import server as srv
    from nvlm_deploy.serve.launch import check_paths, check_repository

    manifest = check_repository(args.repo)
    check_paths(args.repo)
    # the CPU runtime merges every rank in one process; only GPU engines run one server per rank
    world_size = manifest.world_size if manifest.runtime == "gpu" else 1
    if args.print_command:
        print(" ".join(srv.launch_command(args.repo, grpc_port=args.grpc_port, http_port=args.http_port,
                                          host=args.host, world_size=world_size)))
        return 0
    print(f"starting tritonserver on {args.repo} ({manifest.runtime} runtime, world size {world_size})")
    server = srv.start_server(args.repo, grpc_port=args.grpc_port, http_port=args.http_port, host=args.host,
                              log_path=args.log, timeout=args.timeout, world_size=world_size)
    print(f"ready: gRPC {server.grpc_url}, HTTP {server.host}:{server.http_port} (pid {server.pid}, log {server.log_path}); "
          "Ctrl-C stops it", flush=True)
    stop = _stop_on_signals()
    while server.process.poll() is None and not stop:
        time.sleep(0.5)
    if stop:
        print(f"stopping tritonserver ({stop[0]}) ...", flush=True)
        code = server.stop()
        print(f"stopped (exit {code})")
        return 0
    print(f"tritonserver exited with code {server.process.returncode}; log tail:\n{server.log_tail()}")
    return 1


def _stop_on_signals() -> list:
    """Ctrl-C (SIGINT) and SIGTERM both ask for a clean stop; a background shell job ignores SIGINT
    unless the handler is installed explicitly."""
    import signal

    received: list = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: received.append(signal.Signals(number).name))
    return received
