"""A real moto S3 server on 127.0.0.1 whose every HTTP request waits ``delay_s`` first.

Object storage answers each request after tens of milliseconds; moto on loopback answers in
about one. :class:`DelayedMotoServer` runs moto's own WSGI application (the one
``moto.server.ThreadedMotoServer`` serves) behind a middleware that sleeps ``delay_s`` per
request, in a threaded werkzeug server: concurrent requests wait concurrently, as they do on
object storage. Used by ``tests/test_dataset_scale.py`` (small delays) and
``benchmarks/bench_sampler_scale.py`` (50 ms).

Example::

    with DelayedMotoServer(0.05) as s3:
        fs = s3fs.S3FileSystem(**s3.storage_options)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any


class _Delay:
    """WSGI middleware: sleep, then call the application; counts requests and the most in
    flight at once."""

    def __init__(self, app: Any, delay_s: float):
        self.app, self.delay_s = app, float(delay_s)
        self.lock = threading.Lock()
        self.requests = self.in_flight = self.max_in_flight = 0

    def __call__(self, environ: Any, start_response: Any) -> Any:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            return self.app(environ, start_response)
        finally:
            with self.lock:
                self.in_flight -= 1


class DelayedMotoServer:
    """moto S3 on ``127.0.0.1`` (random port) with ``delay_s`` added to every request.

    Attributes
    ----------
    endpoint_url : str
    storage_options : dict
        fsspec/s3fs options (``key``, ``secret``, ``endpoint_url``).
    stats : _Delay
        Request counters (``requests``, ``max_in_flight``).
    """

    def __init__(self, delay_s: float = 0.05):
        self.delay_s = float(delay_s)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.stats: _Delay | None = None
        self._env: dict[str, str | None] = {}

    def __enter__(self) -> DelayedMotoServer:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        env = {"AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost",
               "no_proxy": "127.0.0.1,localhost"}
        self._env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.stats = _Delay(DomainDispatcherApplication(create_backend_app), self.delay_s)
        self._server = make_server("127.0.0.1", 0, self.stats, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        self.storage_options = {"key": "testing", "secret": "testing",
                                "endpoint_url": self.endpoint_url}
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for k, v in self._env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def upload(self, local: str, bucket: str, name: str) -> str:
        """Copy a local folder (a Zarr store) into ``s3://bucket/name`` (without the delay
        mattering: many uploads at once); returns the URL."""
        import s3fs

        fs = s3fs.S3FileSystem(**self.storage_options)
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        url = f"s3://{bucket}/{name}"
        fs.put(local.rstrip("/") + "/", url, recursive=True)
        return url
