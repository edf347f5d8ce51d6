"""Stage 1 of the paper, done by a person: label generated images good or bad.

In Lee et al. (2023), people look at images the text-to-image model produced and mark each one
good or bad for how well it matches its prompt. Elsewhere in this project a procedural judge
stands in for them; this module lets a real person take the judge's place.

It is a tiny local web server over a feedback folder:

    FOLDER/images/<id>.png   the sampled images
    FOLDER/samples.jsonl     one line per image (prompt, category, judge verdict)
    FOLDER/labels.jsonl      the labels stage 2 trains on (written here)
    FOLDER/skipped.json      ids the person skipped, so a restart moves past them

Run it with ``python -m tiny_rlhf_t2i.label FOLDER`` and open the printed URL.
Keys: 1 good, 0 bad, space skip, u or Backspace undo, j show the judge's verdict.
"""

import argparse
import json
import re
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from .files import atomic_write_text, read_jsonl, write_jsonl  # atomic: never half a file

LOOPBACK = "127.0.0.1"
MAX_BODY = 10 * 1024          # every valid post is a few dozen bytes
SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")  # ids end up in URLs and file names
IMAGE_ROUTE = re.compile(r"/images/([A-Za-z0-9_-]+)\.png")
PAGE = Path(__file__).with_name("label_page.html")


# ---------------------------------------------------------------- files
def check_sample(row):
    if not isinstance(row, dict):
        return "expected a JSON object"
    if not isinstance(row.get("id"), str) or not SAFE_ID.fullmatch(row["id"]):
        return "id must be a string of letters, digits, '_' or '-'"
    if not isinstance(row.get("prompt"), str) or not isinstance(row.get("category"), str):
        return "prompt and category must be strings"
    return None


def check_label(row):
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        return "expected a JSON object with a string id"
    if not is_label(row.get("label")):
        return "label must be 0 or 1"
    return None


def is_label(value):
    # json gives bools for true/false, and True == 1 in Python, so rule them out.
    return type(value) is int and value in (0, 1)


def read_skipped(path):
    try:
        skipped = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(skipped, list) or not all(isinstance(i, str) for i in skipped):
        raise ValueError(f"{path}: expected a JSON list of ids")
    return skipped


# ---------------------------------------------------------------- state
class FeedbackFolder:
    """The labels, skips and undo history of one feedback folder.

    Every change takes ``lock`` for its whole read-modify-write, because the server answers each
    request on its own thread and two quick clicks must not both start from the same old file
    and lose one label."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.labels_path = self.folder / "labels.jsonl"
        self.skipped_path = self.folder / "skipped.json"
        self.samples = read_jsonl(self.folder / "samples.jsonl", check_sample)
        self.by_id = {s["id"]: s for s in self.samples}
        rows = read_jsonl(self.labels_path, check_label) if self.labels_path.exists() else []
        self.labels = {r["id"]: r for r in rows}  # in file order; a repeated id keeps its last row
        self.skipped = read_skipped(self.skipped_path) if self.skipped_path.exists() else []
        self.undo_stack = []  # (id, row before, was skipped before)
        self.lock = threading.Lock()

    def label(self, sample_id, value):
        s = self.by_id[sample_id]
        row = {"id": sample_id, "image": s.get("image", f"images/{sample_id}.png"),
               "prompt": s["prompt"], "category": s["category"], "split": s.get("split"),
               "seed": s.get("seed"), "label": value, "reason": "human", "labeler": "human"}
        with self.lock:
            self._change(sample_id, row, skipped=False)

    def skip(self, sample_id):
        # A skip leaves the image unlabeled: no row in labels.jsonl.
        with self.lock:
            self._change(sample_id, None, skipped=True)

    def undo(self):
        """Put back the state before the latest change; False if there is none."""
        with self.lock:
            if not self.undo_stack:
                return False
            sample_id, row, skipped = self.undo_stack.pop()
            self._write(sample_id, row, skipped)
            return True

    def _change(self, sample_id, row, skipped):
        before = (self.labels.get(sample_id), sample_id in self.skipped)
        if before == (row, skipped):
            return  # a repeated click changes nothing, so it gets no undo entry
        self._write(sample_id, row, skipped)
        self.undo_stack.append((sample_id, *before))

    def _write(self, sample_id, row, skipped):
        # Build the new state, write it, and only then adopt it: if a write fails, memory still
        # matches the files on disk.
        labels = {**self.labels, sample_id: row}  # replaces in place: never a second row
        if row is None:
            del labels[sample_id]
        skips = [i for i in self.skipped if i != sample_id] + ([sample_id] if skipped else [])
        if labels != self.labels:
            write_jsonl(self.labels_path, labels.values())
            self.labels = labels
        if skips != self.skipped:
            atomic_write_text(self.skipped_path, json.dumps(skips) + "\n")
            self.skipped = skips

    def state(self):
        with self.lock:
            skipped = set(self.skipped) - set(self.labels)
            nxt = next((s for s in self.samples
                        if s["id"] not in self.labels and s["id"] not in skipped), None)
            per_category = {}  # category -> [labeled, total]
            for s in self.samples:
                counts = per_category.setdefault(s["category"], [0, 0])
                counts[0] += s["id"] in self.labels
                counts[1] += 1
            return {"next": nxt and {
                        "id": nxt["id"], "image": f"/images/{nxt['id']}.png",
                        "prompt": nxt["prompt"], "category": nxt["category"],
                        "judge_good": nxt.get("judge_good"),
                        "judge_reason": nxt.get("judge_reason")},
                    "progress": {"labeled": sum(c[0] for c in per_category.values()),
                                 "total": len(self.samples),
                                 "skipped": len(skipped & self.by_id.keys()),
                                 "per_category": per_category},
                    "can_undo": bool(self.undo_stack)}


# ---------------------------------------------------------------- HTTP
class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    """Routes: GET /, /api/state, /images/<id>.png; POST /api/label, /api/skip, /api/undo."""

    timeout = 10  # seconds; a client that stalls mid-request cannot hold a thread forever

    def do_GET(self):
        if not self._host_ok():
            return
        store, path = self.server.store, urlsplit(self.path).path
        if path == "/":
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/state":
            self._json(200, store.state())
        else:
            # Match the raw path against a strict pattern and a known id, and build the file
            # name ourselves: no "..", "%2e" or absolute path can ever reach the file system.
            m = IMAGE_ROUTE.fullmatch(path)
            try:
                if not (m and m.group(1) in store.by_id):
                    raise FileNotFoundError
                data = (store.folder / "images" / f"{m.group(1)}.png").read_bytes()
            except OSError:
                return self._json(404, {"error": "not found"})
            self._send(200, data, "image/png")

    def do_POST(self):
        if not self._host_ok():
            return
        store, path = self.server.store, urlsplit(self.path).path
        if path not in ("/api/label", "/api/skip", "/api/undo"):
            return self._json(404, {"error": "not found"})
        try:
            body = self._read_json()
            if path == "/api/label":
                sample_id = self._known_id(body, {"id", "label"})
                if not is_label(body["label"]):
                    raise BadRequest("label must be 1 (good) or 0 (bad)")
                store.label(sample_id, body["label"])
            elif path == "/api/skip":
                store.skip(self._known_id(body, {"id"}))
            elif body != {}:
                raise BadRequest("undo takes an empty JSON object")
            elif not store.undo():
                return self._json(409, {"error": "nothing to undo"})
        except BadRequest as e:
            return self._json(400, {"error": str(e)})
        except OSError as e:  # disk full, folder removed: say so instead of hanging up
            return self._json(500, {"error": f"could not save: {e}"})
        self._json(200, store.state())

    def _read_json(self):
        # Requiring application/json also stops other web sites from posting here: a cross-site
        # JSON post needs a CORS preflight we never grant.
        if self.headers.get_content_type() != "application/json":
            raise BadRequest("send Content-Type: application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("missing Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True  # leave the rest of a huge body unread
            raise BadRequest(f"body larger than {MAX_BODY} bytes")
        try:
            return json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # [[[...]]] too
            raise BadRequest("body is not valid JSON") from None
        except TimeoutError:
            raise BadRequest("body shorter than its Content-Length") from None

    def _known_id(self, body, keys):
        if not isinstance(body, dict) or set(body) != keys:
            raise BadRequest(f"expected a JSON object with keys {sorted(keys)}")
        if not isinstance(body["id"], str) or body["id"] not in self.server.store.by_id:
            raise BadRequest("unknown id")
        return body["id"]

    def _host_ok(self):
        # Checking Host defeats DNS rebinding, where a web page re-points its own name at
        # 127.0.0.1 to talk to servers on this machine.
        port = self.server.server_address[1]
        if self.headers.get("Host") in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return True
        self._json(403, {"error": "unexpected Host header"})
        return False

    def _json(self, status, obj):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass  # one line per click would bury the URL and the summary


# ---------------------------------------------------------------- entry points
def serve(folder, port=8765, host=LOOPBACK):
    """Start the labeling server in a daemon thread and return it; stop it with
    ``server.shutdown()`` and then ``server.server_close()``."""
    if host not in (LOOPBACK, "localhost"):
        # The page writes training labels and has no login: keep it on this machine.
        raise ValueError("the labeling server binds to loopback only")
    store = FeedbackFolder(folder)  # fails here, before binding, on a bad file
    server = ThreadingHTTPServer((LOOPBACK, port), Handler)
    server.store, server.page = store, PAGE.read_bytes()
    # A short poll interval lets shutdown() return in a tenth of a second.
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tiny_rlhf_t2i.label",
        description="Label a feedback folder's images good or bad in your browser.")
    parser.add_argument("folder", help="feedback folder with samples.jsonl and images/")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--host", default=LOOPBACK, help="loopback only")
    args = parser.parse_args(argv)
    try:
        server = serve(args.folder, args.port, args.host)
    except (ValueError, OSError) as e:
        parser.exit(2, f"error: {e}\n")
    # A process started in the background by a non-interactive shell inherits SIGINT as
    # ignored; restore Python's handler so Ctrl-C (or a test's SIGINT) always stops the server.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print(f"labeling {len(server.store.samples)} images in {args.folder}: "
              f"open http://{LOOPBACK}:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    server.shutdown()
    server.server_close()
    p = server.store.state()["progress"]
    print(f"\nlabeled {p['labeled']}/{p['total']}, skipped {p['skipped']}; "
          f"labels in {server.store.labels_path}")


if __name__ == "__main__":
    main()
