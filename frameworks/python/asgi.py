"""The hello app as an ASGI app, for uvicorn."""
import asyncio
import os

DELAY = float(os.environ.get("HELLO_REST_REQUEST_DELAY", "1.0"))


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    status, body = 404, b""
    if scope["path"] == "/health":
        status, body = 200, b"OK"
    elif scope["path"] == "/":
        await asyncio.sleep(DELAY)
        status, body = 200, b"Hello World!"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
