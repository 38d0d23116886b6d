"""Client timeouts: a server that accepts the connection but never answers is a stalled stream, said
clearly and in time, by both clients (no tritonserver needed: a socket that never speaks)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from nvlm_deploy.client import AsyncNvlmClient, NvlmClient, ServerUnavailable


@pytest.fixture
def silent_server():
    """127.0.0.1:<port> accepting TCP connections and never sending a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_sync_client_says_the_stream_stalled(silent_server):
    with NvlmClient(silent_server, timeout=2) as client, pytest.raises(ServerUnavailable, match="stalled"):
        client.chat("hi", max_tokens=2)


def test_async_client_says_the_stream_stalled(silent_server):
    async def ask():
        async with AsyncNvlmClient(silent_server, timeout=2) as client:
            return await client.chat("hi", max_tokens=2)

    with pytest.raises(ServerUnavailable, match="stalled"):
        asyncio.run(ask())


def test_chat_command_timeout_flag(silent_server, capsys):
    from nvlm_deploy.cli import main

    assert main(["chat", "--url", silent_server, "--timeout", "2", "hi"]) == 1
    err = capsys.readouterr().err
    assert "stalled: no response for 2 s" in err and "Traceback" not in err
