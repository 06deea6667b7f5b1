"""The hello app as a WSGI app, for gunicorn (sync workers)."""
import os
import time

DELAY = float(os.environ.get("HELLO_REST_REQUEST_DELAY", "1.0"))


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        body = b"OK"
    elif path == "/":
        time.sleep(DELAY)
        body = b"Hello World!"
    else:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
