"""`vitkit serve`: an HTTP API and a web page for one model (needs the `serve` extra).

app: the FastAPI app factory; batching: the dynamic batcher; inference: the model side;
uploads, limits, images: getting a safe image out of a request; server: threads, uvicorn
and shutdown; page.html: the page served at /. The rollout overlay PNG is drawn by
vitkit.visualize.figures.
"""

from .app import ServeOptions, create_app
from .batching import Batcher
from .server import configure_threads, open_for_serving, serve

__all__ = ["Batcher", "ServeOptions", "configure_threads", "create_app", "open_for_serving", "serve"]
