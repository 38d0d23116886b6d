"""nvlm-deploy openai: an OpenAI-compatible HTTP server in front of a running Triton server."""

import argparse

from nvlm_deploy.openai.images import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_IMAGE_BYTES
from nvlm_deploy.openai.protocol import DEFAULT_MODEL_NAME

HELP = "serve /v1/chat/completions (OpenAI-compatible, streaming) in front of a running Triton server"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="127.0.0.1:8001",
                        help="Triton's gRPC address HOST:PORT, as `nvlm-deploy serve` prints it (default 127.0.0.1:8001)")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    net.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    api = parser.add_argument_group("API")
    api.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                     help=f"the model name clients send and /v1/models lists (default {DEFAULT_MODEL_NAME})")
    api.add_argument("--default-max-tokens", type=int, default=None,
                     help="answer length when a request sets no max_tokens (default 64, the gRPC client's; at most "
                          "the repository's max_output_len)")
    images = parser.add_argument_group("images")
    images.add_argument("--allow-remote-images", action="store_true",
                        help="fetch http(s) image URLs (off: only base64 data: URLs; on, any client can make this "
                             "server open URLs)")
    images.add_argument("--max-image-mb", type=float, default=DEFAULT_MAX_IMAGE_BYTES / 2**20,
                        help="largest image, in MiB (default %(default)g)")
    images.add_argument("--image-timeout", type=float, default=DEFAULT_FETCH_TIMEOUT,
                        help="seconds to fetch one remote image (default %(default)g)")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.lazy import require
    from nvlm_deploy.openai.images import ImagePolicy

    require("aiohttp", extra="openai", purpose="The OpenAI-compatible server")
    if args.default_max_tokens is not None and args.default_max_tokens < 1:
        raise DeployError(f"--default-max-tokens must be at least 1, got {args.default_max_tokens}.")
    if args.max_image_mb <= 0 or args.image_timeout <= 0:
        raise DeployError("--max-image-mb and --image-timeout must be positive.")
    policy = ImagePolicy(allow_remote=args.allow_remote_images, max_bytes=int(args.max_image_mb * 2**20),
                         timeout=args.image_timeout)
    return serve(args.url, host=args.host, port=args.port, model_name=args.model_name, images=policy,
                 default_max_tokens=args.default_max_tokens)


def serve(url: str, *, host: str, port: int, **settings) -> int:
    """Run the app until Ctrl-C or SIGTERM; settings as openai.app.Settings."""
    from aiohttp import web

    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.openai.app import Settings, make_app

    config = Settings(triton_url=url, **settings)
    ready = f"ready: http://{host}:{port}/v1 (model {config.model_name!r}, Triton gRPC {url}); Ctrl-C stops it"
    try:
        web.run_app(make_app(config), host=host, port=port, print=lambda _: print(ready, flush=True),
                    access_log=None)
    except OSError as exc:  # the port is taken or the address is not this machine's
        raise DeployError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or "
                          "--host.") from None
    print("stopped")
    return 0
