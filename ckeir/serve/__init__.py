"""`ckec serve`: an OpenAI-compatible HTTP server over the continuous-batching scheduler.

The stack is the Python web's maintained one: a Starlette app (`app.py`) served by uvicorn,
server-sent events through sse-starlette, `/metrics` through prometheus_client.  The model
(`model.py`) compiles and loads on a thread while the server already answers `/health`
with 503; requests become scheduler sequences, each with its own sampler
(`runtime.sampling`) and its text streamed through `runtime.tokenizer.TextStream`.
"""

from __future__ import annotations

import socket
import sys
import threading

from ckeir.errors import CkeError


def serve(
    spec,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    parallel: int | None = None,
    log=print,
    transport=None,
    stop_event=None,
    **program_options,
) -> None:
    """Serve `spec` until SIGINT/SIGTERM (or `stop_event` is set); raises the model's
    CkeError if it fails to load.  `transport`: rank 0's, when the schedule runs on several
    ranks (the others run `ckeir.serve.ranks.serve_rank`)."""
    try:
        import uvicorn

        from ckeir.serve.app import create_app
    except ImportError as e:
        raise CkeError(
            f"ckec serve needs the serve extra ({e.name} is missing)",
            hint="pip install 'ckeir[serve]'",
        ) from None
    from ckeir.serve.model import ServedModel

    model = ServedModel(spec, parallel=parallel, transport=transport, **program_options)
    server: uvicorn.Server | None = None

    def failed(error: BaseException) -> None:
        log(f"ckec serve: the model failed to load: {error}")
        if server is not None:
            server.should_exit = True

    def announce_ready() -> None:
        model.ready.wait()
        slots = model.scheduler.engine.slots
        ranks = f" over {model.prog.world_size} ranks" if model.prog.world_size > 1 else ""
        log(f"ckec serve: {model.name} ready, {slots} slot{'s' * (slots != 1)}{ranks}")

    config = uvicorn.Config(
        create_app(model, on_failure=failed),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = _quiet_exit_server(uvicorn)(config)
    sock = listening_socket(host, port)
    port = sock.getsockname()[1]  # the one the system chose for port 0
    threading.Thread(target=announce_ready, daemon=True).start()
    if stop_event is not None:  # the launcher of local ranks was told to stop

        def stop_when_told() -> None:
            stop_event.wait()
            server.should_exit = True

        threading.Thread(target=stop_when_told, daemon=True).start()
    log(f"ckec serve: listening on http://{host}:{port} (loading {spec})")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if model.error is not None:
        raise model.error
    if not server.started:
        raise CkeError(f"ckec serve: could not listen on {host}:{port}")


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything loads: an address in use is a CkeError
    at once, not a log line after the model compiled."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CkeError(
            f"ckec serve cannot listen on {host}:{port}: {e.strerror or e}",
            hint="choose another --port (0: any free one), or stop what listens there",
        ) from None
    return sock


def _quiet_exit_server(uvicorn):
    class Server(uvicorn.Server):
        """uvicorn's server, except that the SIGTERM or SIGINT that shut it down cleanly ends
        `ckec serve` with status 0, instead of being raised again once the server is down
        (which would report a clean stop as death by signal)."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            getattr(self, "_captured_signals", []).clear()

    return Server


def main_log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
