"""Helpers for the tests of the demo page (app.py, a Space's app.py): start one, ask it
through its HTTP API as gradio_client does, fetch what it serves."""
import os
import socket
from concurrent.futures import ThreadPoolExecutor
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(command, cwd, env=None, timeout=180, port=None):
    """Start a page's process (on a free port, given as --port unless `port` says it is
    set otherwise); (process, url) once it answers, or fail with its output."""
    given = port is None
    port = port or free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    proc = subprocess.Popen(command + (["--port", str(port)] if given else []), cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the page exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"the page did not answer within {timeout} s")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def ask(url, path):
    """(label, the picture shown: a local file, note) of the page's /classify."""
    import gradio_client
    client = gradio_client.Client(url, verbose=False)
    return client.predict(gradio_client.handle_file(str(path)), api_name="/classify")


def top(answer):
    label = answer[0]
    return label.get("label") if isinstance(label, dict) else None


def fetch(url, path):
    """(HTTP status, body) of the page's file route for a path on the server's disk: what
    anyone who can reach the page can ask for."""
    try:
        with urllib.request.urlopen(f"{url}gradio_api/file={urllib.parse.quote(str(path))}",
                                    timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rounds(url, pictures, want, n=3):
    """n times, 16 requests at once, 8 of each picture: every answer's label, and its
    picture downloaded whole, pixel for pixel that of the first answer for the same
    picture. Returns the failures, [] when every answer was whole and right."""
    import numpy as np
    from PIL import Image
    firsts, failures = {}, []
    for _ in range(n):
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda p: (p, ask(url, p)), pictures * 8))
        for picture, answer in answers:
            try:
                with Image.open(answer[1]) as im:
                    pixels = np.asarray(im.convert("RGB"))  # a truncated file raises here
            except OSError as e:
                failures.append(f"{os.path.basename(picture)}: {e}")
                continue
            first = firsts.setdefault(picture, pixels)
            if top(answer) != want[picture] or not np.array_equal(pixels, first):
                failures.append(f"{os.path.basename(picture)}: {top(answer)}, picture differs")
    return failures
