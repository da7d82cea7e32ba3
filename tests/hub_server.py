"""A small in-memory fake of the Hugging Face Hub HTTP API, served on 127.0.0.1 (tests only).

It implements what `huggingface_hub` (2.x) calls for pushing and pulling a model repo:

========  ===============================================================  =========================
method    route                                                            used by
========  ===============================================================  =========================
POST      /api/repos/create                                                create_repo
POST      /api/validate-yaml                                               upload_folder/create_commit
GET       /api/whoami-v2                                                   whoami (repo id w/o owner)
GET       /api/{type}s/{ns}/{name}[/revision/{rev}]                        repo_info / model_info
GET       /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]                     list_repo_tree/files
POST      /api/{type}s/{ns}/{name}/paths-info/{rev}                        get_paths_info
POST      /api/{type}s/{ns}/{name}/preupload/{rev}                         upload mode per file
POST      /api/{type}s/{ns}/{name}/commit/{rev}                            the NDJSON commit
HEAD,GET  /[{type}s/]{ns}/{name}/resolve/{rev}/{path}                      hf_hub_download
========  ===============================================================  =========================

Every file is answered as a *regular* (non-LFS) file in preupload, so its content travels base64-encoded inside
the commit and no LFS/Xet transfer is ever started; downloads answer without any ``X-Xet-*`` header, so
`huggingface_hub` uses the plain HTTP path (ETag = git blob sha1, ``X-Repo-Commit``, ``Content-Length``).

Failures can be simulated per test: `FakeHub.fail_with(500)` (every request, or only some routes),
`FakeHub.require_token = "hf_..."` (write routes answer 401 without that bearer token), and `dead_endpoint()`
gives a URL on which nothing listens (connection refused).

Fixtures: `fake_hub` (a started server with huggingface_hub/transformers pointed at it) and `dead_hub`
(the same patching, pointed at an endpoint that refuses connections).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

FAKE_USER = "fake-user"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_RESOLVE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_WRITE_ROUTES = {"create_repo", "preupload", "commit", "whoami"}

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API_REPO = r"/api/(?P<type>models|datasets|spaces)/" + _REPO
_ROUTES: list[tuple[str, str, re.Pattern]] = [
    ("POST", "create_repo", re.compile(r"^/api/repos/create$")),
    ("POST", "validate_yaml", re.compile(r"^/api/validate-yaml$")),
    ("GET", "whoami", re.compile(r"^/api/whoami-v2$")),
    ("GET", "tree", re.compile(_API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")),
    ("POST", "paths_info", re.compile(_API_REPO + r"/paths-info/(?P<rev>[^/]+)$")),
    ("POST", "preupload", re.compile(_API_REPO + r"/preupload/(?P<rev>[^/]+)$")),
    ("POST", "commit", re.compile(_API_REPO + r"/commit/(?P<rev>[^/]+)$")),
    ("GET", "repo_info", re.compile(_API_REPO + r"(?:/revision/(?P<rev>[^/]+))?$")),
    ("GET", "resolve", re.compile(r"^/(?:(?P<type>datasets|spaces)/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
    ("HEAD", "resolve", re.compile(r"^/(?:(?P<type>datasets|spaces)/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
]

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, bytes]
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision in ("main", "refs/heads/main"):
            return self.head
        for c in self.commits:
            if len(revision) >= 7 and c.oid.startswith(revision):
                return c
        return None


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class FakeHub:
    """In-memory Hub: repos → commits → {path: bytes}. Start with `start()`, or use the `fake_hub` fixture."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, str, int]] = []  # (method, path, route, status)
        self.unhandled: list[tuple[str, str]] = []
        self.require_token: str | None = None
        self._fail_status: int | None = None
        self._fail_routes: set[str] | None = None
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def fail_with(self, status: int | None, routes: set[str] | list[str] | None = None) -> None:
        """Answer `status` to every request (or only to the named routes, e.g. {"commit"}); None = stop failing."""
        with self._lock:
            self._fail_status = status
            self._fail_routes = set(routes) if routes else None

    def routes_called(self) -> list[str]:
        return [r for _, _, r, _ in self.requests]

    # -- inspection -----------------------------------------------------------------------------------

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[(repo_type, repo_id)]
        commit = repo.at(revision)
        assert commit is not None, f"no revision {revision!r} in {repo_id}"
        return dict(commit.files)

    # -- request handling -----------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        route, match = None, None
        for m, name, pattern in _ROUTES:
            if m == method and (match := pattern.match(path)):
                route = name
                break
        status, out_headers, out = self._dispatch(method, path, route, match, query, headers, body)
        with self._lock:
            self.requests.append((method, path, route or "?", status))
        return status, out_headers, out

    def _dispatch(self, method, path, route, match, query, headers, body):
        try:
            with self._lock:
                fail_status, fail_routes = self._fail_status, self._fail_routes
            if fail_status is not None and (fail_routes is None or route in fail_routes):
                if fail_status in (401, 403):
                    raise _HubError(fail_status, INVALID_CREDENTIALS if fail_status == 401 else "Forbidden (simulated)")
                raise _HubError(fail_status, f"Internal Error - simulated {fail_status}")
            if route is None:
                with self._lock:
                    self.unhandled.append((method, path))
                raise _HubError(404, f"Fake hub: no route for {method} {path}")
            if route in _WRITE_ROUTES and self.require_token is not None:
                if headers.get("Authorization") != f"Bearer {self.require_token}":
                    raise _HubError(401, INVALID_CREDENTIALS)
            groups = {k: (unquote(v) if v is not None else None) for k, v in match.groupdict().items()}
            with self._lock:
                return getattr(self, f"_r_{route}")(method=method, query=query, body=body, **groups)
        except _HubError as e:
            out_headers = {"X-Error-Message": e.message}
            if e.code:
                out_headers["X-Error-Code"] = e.code
            if e.commit:
                out_headers["X-Repo-Commit"] = e.commit
            return e.status, out_headers, json.dumps({"error": e.message}).encode()

    # -- helpers -------------------------------------------------------------------------------------

    def _repo(self, type_: str | None, ns: str, name: str) -> Repo:
        repo_type = _TYPES.get(type_, "model") if type_ else "model"
        repo = self.repos.get((repo_type, f"{ns}/{name}"))
        if repo is None:
            raise _HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, rev: str | None) -> Commit:
        commit = repo.at(rev or "main")
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return commit

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{_RESOLVE_PREFIX[repo.repo_type]}{repo.repo_id}"

    @staticmethod
    def _json(data, status: int = 200) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(data).encode()

    @staticmethod
    def _entry(path: str, content: bytes) -> dict:
        return {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha1(content)}

    def _new_commit(self, repo: Repo, title: str, files: dict[str, bytes]) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else ""
        oid = hashlib.sha1(f"{parent}{title}{uuid.uuid4()}".encode()).hexdigest()
        commit = Commit(oid=oid, title=title, files=files)
        repo.commits.append(commit)
        return commit

    # -- routes --------------------------------------------------------------------------------------

    def _r_create_repo(self, body, **_):
        payload = json.loads(body or b"{}")
        name, org = payload.get("name"), payload.get("organization") or FAKE_USER
        repo_type = payload.get("type") or "model"
        if not name or repo_type not in _RESOLVE_PREFIX:
            raise _HubError(400, "Invalid repo name or type")
        repo_id = f"{org}/{name}"
        key = (repo_type, repo_id)
        if key in self.repos:
            return self._json({"error": "You already created this model repo", "url": self._repo_url(self.repos[key])},
                              status=409)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private)
        self._new_commit(repo, "initial commit", {".gitattributes": GITATTRIBUTES})
        self.repos[key] = repo
        return self._json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _r_validate_yaml(self, body, **_):
        content = json.loads(body or b"{}").get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if match:
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as e:
                return self._json({"errors": [{"message": f"Invalid YAML: {e}"}]}, status=400)
            if meta is not None and not isinstance(meta, dict):
                return self._json({"errors": [{"message": "YAML metadata must be a mapping"}]}, status=400)
        return self._json({"errors": [], "warnings": []})

    def _r_whoami(self, **_):
        return self._json({"type": "user", "name": FAKE_USER, "fullname": "Fake User", "orgs": [],
                           "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}}})

    def _r_repo_info(self, type, ns, name, rev=None, **_):  # noqa: A002
        repo = self._repo(type, ns, name)
        commit = self._commit_at(repo, rev)
        return self._json({
            "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid,
            "private": repo.private, "gated": False, "disabled": False,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
            "tags": [], "downloads": 0, "likes": 0,
            "siblings": [{"rfilename": p, "size": len(c), "blobId": git_blob_sha1(c)} for p, c in sorted(commit.files.items())],
        })

    def _r_tree(self, type, ns, name, rev, path=None, query=None, **_):  # noqa: A002
        commit = self._commit_at(self._repo(type, ns, name), rev)
        recursive = (query or {}).get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = (path or "").strip("/")
        base = f"{prefix}/" if prefix else ""
        if prefix and prefix in commit.files:
            raise _HubError(404, f"{prefix} is a file, not a folder", code="EntryNotFound", commit=commit.oid)
        entries, folders = [], set()
        for p, content in sorted(commit.files.items()):
            if not p.startswith(base):
                continue
            rest = p[len(base):]
            if recursive:
                parts = rest.split("/")
                for i in range(1, len(parts)):
                    folders.add(base + "/".join(parts[:i]))
                entries.append(self._entry(p, content))
            elif "/" in rest:
                folders.add(base + rest.split("/")[0])
            else:
                entries.append(self._entry(p, content))
        if prefix and not entries and not folders:
            raise _HubError(404, f"{prefix} does not exist", code="EntryNotFound", commit=commit.oid)
        dirs = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in sorted(folders)]
        return self._json(dirs + entries)

    def _r_paths_info(self, type, ns, name, rev, body, **_):  # noqa: A002
        commit = self._commit_at(self._repo(type, ns, name), rev)
        form = parse_qs(body.decode())
        out = [self._entry(p, commit.files[p]) for p in form.get("paths", []) if p in commit.files]
        return self._json(out)

    def _r_preupload(self, type, ns, name, rev, body, **_):  # noqa: A002
        repo = self._repo(type, ns, name)
        commit = repo.at(unquote(rev)) or repo.head
        files = json.loads(body)["files"]
        return self._json({
            "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                       "oid": git_blob_sha1(commit.files[f["path"]]) if f["path"] in commit.files else None}
                      for f in files],
            "commitOid": commit.oid,
        })

    def _r_commit(self, type, ns, name, rev, body, **_):  # noqa: A002
        repo = self._repo(type, ns, name)
        if unquote(rev) not in ("main", "refs/heads/main"):
            raise _HubError(400, f"Fake hub only commits to main, got {rev!r}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and not repo.head.oid.startswith(parent):
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.head.files)
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value", {})
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, "Only base64 file content is supported")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise _HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
            else:  # lfsFile is never requested: preupload answers "regular" for every file
                raise _HubError(400, f"Fake hub does not support commit operation {key!r}")
        commit = self._new_commit(repo, header.get("summary") or "commit", files)
        return self._json({"success": True, "commitOid": commit.oid,
                           "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}"})

    def _r_resolve(self, method, type, ns, name, rev, path, **_):  # noqa: A002
        repo = self._repo(type, ns, name)
        commit = self._commit_at(repo, rev)
        if path not in commit.files:
            raise _HubError(404, "Entry not found", code="EntryNotFound", commit=commit.oid)
        content = commit.files[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(content)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Length": str(len(content)),
        }
        return 200, headers, content


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub (every response carries Content-Length)
    fake_hub: FakeHub

    def log_message(self, format, *args):  # noqa: A002 - silence stderr logging
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        body = self._read_body()
        status, headers, content = self.fake_hub.handle(method, self.path, self.headers, body)
        range_header = self.headers.get("Range")
        if method == "GET" and status == 200 and range_header and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)):
            start, end = int(m.group(1)), int(m.group(2) or len(content) - 1)
            total = len(content)
            content = content[start:end + 1]
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{start + len(content) - 1}/{total}",
                       "Content-Length": str(len(content))}
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(content)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(content)

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_HEAD(self):  # noqa: N802
        self._serve("HEAD")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")


# --- pointing huggingface_hub / transformers at an endpoint ------------------------------------------

def use_hub_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str, home) -> None:
    """Point huggingface_hub and transformers at `endpoint` for one test, online, with a private cache.

    huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE / the token path into module constants at
    import time, and `hf_api.api` (behind `huggingface_hub.create_repo`, `upload_folder`, ...) and transformers'
    shared `HfApi` capture the endpoint when they are built; so besides the environment (for subprocesses) the
    constants and those instances are patched. monkeypatch restores everything after the test.
    """
    import huggingface_hub.hf_api as hf_api_module
    import transformers.utils.hub as tf_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    endpoint = endpoint.rstrip("/")
    cache = str(home / "hub_cache")
    token_path = str(home / "hf_home" / "token")  # does not exist: no real token is ever sent to the fake hub
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE",
                "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_TOKEN_PATH", token_path)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", token_path)
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "hf_home" / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_api_module.api, "endpoint", endpoint)
    monkeypatch.setattr(tf_hub, "_hf_api", None, raising=False)  # re-created lazily with the new endpoint
    _http.close_session()  # no keep-alive connection from an earlier test is reused


def dead_endpoint() -> tuple[str, socket.socket]:
    """A URL on 127.0.0.1 where connections are refused: a bound socket that never listens holds the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{sock.getsockname()[1]}", sock


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A running FakeHub, with huggingface_hub/transformers online and pointed at it (for this test only)."""
    from huggingface_hub.utils import _http

    hub = FakeHub().start()
    use_hub_endpoint(monkeypatch, hub.url, tmp_path)
    try:
        yield hub
    finally:
        _http.close_session()
        hub.stop()


@pytest.fixture
def dead_hub(monkeypatch, tmp_path):
    """An endpoint nobody listens on ("server down"), with huggingface_hub pointed at it; yields its URL."""
    from huggingface_hub.utils import _http

    url, sock = dead_endpoint()
    use_hub_endpoint(monkeypatch, url, tmp_path)
    try:
        yield url
    finally:
        _http.close_session()
        sock.close()
