"""`ntclass view`: a finished project's views served on 127.0.0.1, with the neuroglancer
client bundled in the `neuroglancer` Python package, so that no internet is needed.

Two servers: the project folder, read-only, with CORS (so that any neuroglancer, e.g. the
public one, may read it) and byte ranges (sharded annotations and volumes are read by
range), on tornado's static handler (tornado comes with the neuroglancer package); and the
`neuroglancer` package's own server, which serves its client and hands it the state (its
client takes the state from that server, not from the URL). A state's local sources were
written for `view.served_at`; they are moved to the address served."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import tornado.httpserver
import tornado.netutil
import tornado.web

from ntclass.errors import NtclassError
from ntclass.view.state import source_urls

OUTSIDE = "/@abs"  # the prefix of local raw outside the project folder (state.raw_source)


@dataclass(frozen=True)
class ServedState:
    """One model and target's state, its sources moved to the served address."""

    model: str
    target: str
    state: dict
    outside_roots: tuple[Path, ...]  # local raw outside the project, allowed under OUTSIDE


def find_states(project: Path) -> list[tuple[str, str]]:
    """(model, target) of every state.json under results/view/."""
    return sorted((p.parent.parent.name, p.parent.name)
                  for p in project.glob("results/view/*/*/state.json"))


def choose_state(project: Path, model: str | None, target: str | None) -> tuple[str, str]:
    """The one state asked for, or the only one there is."""
    found = [s for s in find_states(project)
             if (model is None or s[0] == model) and (target is None or s[1] == target)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(f"{m}/{t}" for m, t in find_states(project)) or "none"
    if not found:
        raise NtclassError(f"no view of model {model or 'any'} and target {target or 'any'} "
                           f"under '{project}/results/view' (found: {names}); run the "
                           "workflow with view.enabled first")
    raise NtclassError(f"several views under '{project}/results/view' ({names}): choose one "
                       "with --model and --target")


def served_state(project: Path, model: str, target: str, address: str) -> ServedState:
    """The state of `model`/`target` with the served-at address it was written for
    replaced by `address`."""
    path = project / "results" / "view" / model / target / "state.json"
    text = path.read_text()
    value = json.loads(text)
    suffix = f"/results/view/{model}/{target}/annotations"
    sources = [url for layer in value["layers"] if layer["type"] == "annotation"
               for url in source_urls(layer)]
    match = re.fullmatch(r"precomputed://(.*)" + re.escape(suffix), sources[0]) if sources \
        else None
    if not match:
        raise NtclassError(f"'{path}': its annotation layer's source is not under "
                           f"{suffix}; was it written by ntclass?")
    written_for = match.group(1)
    value = json.loads(text.replace(json.dumps(written_for)[1:-1],
                                    json.dumps(address.rstrip("/"))[1:-1]))
    outside = re.findall(re.escape(address.rstrip("/") + OUTSIDE) + r'(/[^"]+)',
                         json.dumps(value))
    return ServedState(model, target, value, tuple(Path(p) for p in outside))


class ProjectFiles(tornado.web.StaticFileHandler):
    """The project's files with CORS, on tornado's static handler (which does byte ranges,
    HEAD, 416 and ETags). What tornado answers with 403 (a path outside the root, a
    directory) is a 404 here: the server does not tell what exists beyond what it serves."""

    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Allow-Headers", "Range")
        self.set_header("Access-Control-Expose-Headers", "Content-Range, Content-Length")

    def options(self, *args) -> None:
        self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.set_status(204)

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        absolute = os.path.normpath(os.path.join(root, path))
        if not is_within(Path(absolute), Path(root)):
            raise tornado.web.HTTPError(404)
        return absolute

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if not os.path.isfile(absolute_path):
            raise tornado.web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)


class OutsideFiles(ProjectFiles):
    """Local raw outside the project, under OUTSIDE + its absolute path: only within the
    roots that the served state names."""

    def initialize(self, path: str, roots: list[Path]) -> None:
        super().initialize(path, allowed_symlink_directory="/")
        self.roots = roots

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if not any(is_within(Path(absolute_path), r) for r in self.roots):
            raise tornado.web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)


def is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class FileServer:
    """The project folder served on `host`:`port` (0: a free one) by tornado, in a thread
    with an event loop of its own (the neuroglancer package runs its server beside it).
    The local raw outside the project that a state names is served once `allow`ed."""

    def __init__(self, project: Path, host: str, port: int, quiet: bool = True):
        self.outside_roots: list[Path] = []
        # symlinks inside the project are followed wherever they lead, as a shell would:
        # the project is the lab's own folder, served on their machine
        app = tornado.web.Application([
            (re.escape(OUTSIDE) + r"(/.*)", OutsideFiles,
             {"path": "/", "roots": self.outside_roots}),
            (r"/(.*)", ProjectFiles,
             {"path": str(project.resolve()), "allowed_symlink_directory": "/"}),
        ], log_function=(lambda handler: None) if quiet else self.log)
        sockets = tornado.netutil.bind_sockets(port, address=host)
        self.port = sockets[0].getsockname()[1]
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.http = tornado.httpserver.HTTPServer(app)
            self.http.add_sockets(sockets)
            self.loop.call_soon(started.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait()

    @staticmethod
    def log(handler: tornado.web.RequestHandler) -> None:
        request = handler.request
        print(f"{handler.get_status()} {request.method} {request.uri} "
              f"{1000 * request.request_time():.1f} ms", flush=True)

    def allow(self, roots) -> None:
        self.outside_roots[:] = [Path(r).resolve() for r in roots]

    def stop(self) -> None:
        def shut() -> None:
            self.http.stop()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shut)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class View:
    """A running `ntclass view`: the file server (not yet serving) and the client's URL."""

    files: FileServer
    url: str
    viewer: object  # neuroglancer.Viewer: its server forgets viewers nothing refers to

    def stop(self) -> None:
        import neuroglancer

        self.files.stop()
        neuroglancer.stop()


def start_view(project: Path, model: str, target: str, host: str, port: int,
               client_port: int = 0, quiet: bool = True) -> View:
    """Serve `project`'s files on `port` in a thread and hand the state of `model`/`target`
    to the bundled client's server on `client_port`."""
    try:
        import neuroglancer
    except ImportError as e:
        raise NtclassError("`ntclass view` needs the `neuroglancer` package (for its "
                           "bundled client): pip install neuroglancer==2.41.2") from e
    files = FileServer(project, host, port, quiet=quiet)
    chosen = served_state(project, model, target, f"http://{host}:{files.port}")
    files.allow(chosen.outside_roots)
    neuroglancer.set_server_bind_address(host, client_port)
    viewer = neuroglancer.Viewer()
    viewer.set_state(chosen.state)
    return View(files, viewer.get_viewer_url(), viewer)


def serve(project: str, model: str | None, target: str | None, host: str, port: int,
          client_port: int = 0, verbose: bool = False) -> int:
    """Serve a finished project until interrupted; print the URL that opens the state."""
    import time

    root = Path(project).resolve()
    model, target = choose_state(root, model, target)
    view = start_view(root, model, target, host, port, client_port, quiet=not verbose)
    print(f"serving {root} at http://{host}:{view.files.port} (Ctrl-C stops)")
    print(f"open {model}/{target} in neuroglancer: {view.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()
    return 0
