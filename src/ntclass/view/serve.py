"""`ntclass view`: a finished project's views served on 127.0.0.1, with the neuroglancer
client bundled in the `neuroglancer` Python package, so that no internet is needed.

Two servers: the project folder, read-only, with CORS (so that any neuroglancer, e.g. the
public one, may read it) and byte ranges (sharded annotations and volumes are read by
range); and the `neuroglancer` package's own server, which serves its client and hands it
the state (its client takes the state from that server, not from the URL). A state's
local sources were written for `view.served_at`; they are moved to the address served."""

from __future__ import annotations

import http.server
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ntclass.errors import NtclassError

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
    sources = [layer["source"] for layer in value["layers"] if layer["type"] == "annotation"]
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


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with CORS and single byte ranges; no directory listings."""

    project: Path
    outside_roots: tuple[Path, ...] = ()
    quiet = True

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        if path.startswith(OUTSIDE + "/"):
            target = Path(os.path.normpath(path[len(OUTSIDE):]))
            if any(target == r or r in target.parents for r in self.outside_roots):
                return str(target)
            return str(self.project / ".forbidden")
        return self._within(self.project, path.lstrip("/"))

    @staticmethod
    def _within(root: Path, relative: str) -> str:
        target = Path(os.path.normpath(root / relative))
        return str(target) if target == root or root in target.parents else str(
            root / ".forbidden")

    def list_directory(self, path):  # noqa: ARG002 (the signature of the base class)
        self.send_error(404, "no directory listings")
        return None

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length")
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_OPTIONS(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(204)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.end_headers()

    def send_head(self):
        ranged = self._range()
        if ranged is None:
            return super().send_head()
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404, "not found")
            return None
        size = os.path.getsize(path)
        start, end = ranged
        if start is None:  # the last `end` bytes
            start, end = max(size - end, 0), size - 1
        end = min(size - 1 if end is None else end, size - 1)
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        f = open(path, "rb")  # noqa: SIM115 (closed by copyfile's caller, as in the base)
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            chunk = source.read(min(remaining, 1 << 20))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)
        self._remaining = None
        return None

    def _range(self) -> tuple[int | None, int | None] | None:
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip()) if header else None
        if not match or match.groups() == ("", ""):
            return None
        first, last = match.groups()
        if not first:
            return None, int(last)
        return int(first), int(last) if last else None

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base's signature)
        if not self.quiet:
            super().log_message(format, *args)


def file_server(project: Path, host: str, port: int, quiet: bool = True
                ) -> http.server.ThreadingHTTPServer:
    """A server of the `project` folder (port 0: a free port). The local raw outside it
    that a state names is allowed once the state is known (`ServedState.outside_roots`)."""
    handler = type("ProjectHandler", (Handler,), {"project": project.resolve(),
                                                  "quiet": quiet})
    return http.server.ThreadingHTTPServer((host, port), handler)


@dataclass
class View:
    """A running `ntclass view`: the file server (not yet serving) and the client's URL."""

    files: http.server.ThreadingHTTPServer
    url: str
    viewer: object  # neuroglancer.Viewer: its server forgets viewers nothing refers to

    def stop(self) -> None:
        import neuroglancer

        self.files.shutdown()
        self.files.server_close()
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
    import threading

    files = file_server(project, host, port, quiet=quiet)
    address = f"http://{host}:{files.server_address[1]}"
    chosen = served_state(project, model, target, address)
    files.RequestHandlerClass.outside_roots = tuple(r.resolve() for r in chosen.outside_roots)
    threading.Thread(target=files.serve_forever, daemon=True).start()
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
    print(f"serving {root} at http://{host}:{view.files.server_address[1]} (Ctrl-C stops)")
    print(f"open {model}/{target} in neuroglancer: {view.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()
    return 0
