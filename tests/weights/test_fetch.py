"""Downloads against a local HTTP server on 127.0.0.1: complete, resumed with Range after a dropped
connection, a server that ignores Range, corrupted bytes, HTTP errors. Never touches the internet."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType

import pytest

from refine_cli.errors import ChecksumError, DownloadError
from refine_cli.weights import catalog, download, fetch, trunk_path
from refine_cli.weights.catalog import RemoteFile
from tests.disk import LimitedDisk


class Handler(BaseHTTPRequestHandler):
    """Serves `server.files`; behaviours per file: "drop_first" (first answer stops half-way and drops the
    connection), "ignore_range" (always 200 with everything), "corrupt" (flipped bytes), "drop_always"."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        if name not in srv.files:
            self.send_error(404, "Not Found")
            return
        data = srv.files[name]
        behaviour = srv.behaviour.get(name, "normal")
        if behaviour == "corrupt":
            data = bytes(b ^ 0x5A for b in data)
        start = 0
        rng = self.headers.get("Range")
        if rng and behaviour != "ignore_range":
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drop = behaviour == "drop_always" or (behaviour == "drop_first" and len(srv.requests) == 1)
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.behaviour, srv.requests = {}, {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


PAYLOAD = bytes(range(256)) * 400  # 100 KiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def remote(server, monkeypatch):
    """A catalog holding one trunk file served by the local server."""
    server.files["trunk-abc.pth"] = PAYLOAD
    rf = RemoteFile(name="tiny_trunk", file_name="trunk-abc.pth", url=f"{server.url}/trunk-abc.pth",
                    sha256=sha(PAYLOAD)[:8], kind="trunk", description="test", source_format="raw", trunk="tiny")
    monkeypatch.setattr(catalog, "REMOTE_FILES", MappingProxyType({rf.name: rf}))
    return rf


def test_fetch_downloads_verifies_and_records(server, remote, tmp_path):
    seen = []
    path = fetch("tiny_trunk", cache_dir=tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "downloads" / "trunk-abc.pth"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "downloads" / "trunk-abc.pth.part").exists()
    manifest = json.loads((tmp_path / "downloads" / "manifest.json").read_text())
    assert manifest["files"]["trunk-abc.pth"]["sha256"] == sha(PAYLOAD)  # the full hash, not the prefix
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    # A second fetch finds the file and does not ask the server again.
    asked = len(server.requests)
    assert fetch("tiny_trunk", cache_dir=tmp_path) == path
    assert len(server.requests) == asked
    assert trunk_path("tiny", cache_dir=tmp_path, download=False) == path


def test_dropped_connection_leaves_part_then_resumes_with_range(server, remote, tmp_path):
    server.behaviour["trunk-abc.pth"] = "drop_first"
    with pytest.raises(DownloadError, match="run the same command again to resume") as info:
        fetch("tiny_trunk", cache_dir=tmp_path)
    assert "\n" not in str(info.value)
    part = tmp_path / "downloads" / "trunk-abc.pth.part"
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert not (tmp_path / "downloads" / "trunk-abc.pth").exists()
    kept = part.stat().st_size

    path = fetch("tiny_trunk", cache_dir=tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("trunk-abc.pth", f"bytes={kept}-")
    assert not part.exists()


def test_a_full_disk_says_so_and_the_next_run_resumes(server, remote, tmp_path, monkeypatch):
    """The disk, not the network, stops the download: the error says to make room, what was written is kept, and
    the next run resumes from it."""
    disk = LimitedDisk(room=40_000)
    monkeypatch.setattr(importlib.import_module("refine_cli.weights.fetch"), "open", disk.open, raising=False)
    dest = tmp_path / "downloads" / "trunk-abc.pth"
    with pytest.raises(DownloadError, match=r"downloads takes no more of trunk-abc\.pth \(No space left on device\); "
                                            r"make room and run the same command again to resume"):
        download(remote.url, dest, sha256=remote.sha256, chunk_bytes=8192)
    kept = (tmp_path / "downloads" / "trunk-abc.pth.part").stat().st_size
    assert 0 < kept <= 40_000 and not dest.exists()

    disk.room = len(PAYLOAD)
    assert download(remote.url, dest, sha256=remote.sha256, chunk_bytes=8192).read_bytes() == PAYLOAD
    assert server.requests[-1] == ("trunk-abc.pth", f"bytes={kept}-")


def test_server_ignoring_range_restarts_from_zero(server, remote, tmp_path):
    server.behaviour["trunk-abc.pth"] = "ignore_range"
    part = tmp_path / "downloads" / "trunk-abc.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from some other file")
    path = fetch("tiny_trunk", cache_dir=tmp_path)
    assert server.requests[-1][1] is not None  # it asked for a range...
    assert path.read_bytes() == PAYLOAD  # ...got everything, and did not append


def test_complete_part_is_finished_without_new_bytes(server, remote, tmp_path):
    part = tmp_path / "downloads" / "trunk-abc.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)  # a run killed between the last byte and the rename
    path = fetch("tiny_trunk", cache_dir=tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("trunk-abc.pth", f"bytes={len(PAYLOAD)}-")]


def test_corrupted_bytes_raise_checksum_error_and_delete_part(server, remote, tmp_path):
    server.behaviour["trunk-abc.pth"] = "corrupt"
    with pytest.raises(ChecksumError) as info:
        fetch("tiny_trunk", cache_dir=tmp_path)
    msg = str(info.value)
    assert "trunk-abc.pth" in msg and remote.sha256 in msg
    assert sha(bytes(b ^ 0x5A for b in PAYLOAD)) in msg  # the actual hash
    assert list((tmp_path / "downloads").iterdir()) == []


def test_full_hash_is_checked_when_known(server, tmp_path):
    server.files["f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    assert download(f"{server.url}/f.bin", dest, sha256=sha(PAYLOAD)).read_bytes() == PAYLOAD
    wrong = sha(PAYLOAD)[:60] + "0000"
    with pytest.raises(ChecksumError):
        download(f"{server.url}/f.bin", tmp_path / "g.bin", sha256=wrong)
    with pytest.raises(ValueError, match="at least 8 hex"):
        download(f"{server.url}/f.bin", tmp_path / "h.bin", sha256="abc")


def test_small_chunks_and_http_errors(server, tmp_path):
    server.files["f.bin"] = PAYLOAD
    calls = []
    download(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(PAYLOAD), chunk_bytes=4096,
             progress=lambda d, t: calls.append(d))
    assert len(calls) == 1 + -(-len(PAYLOAD) // 4096)  # the start, then every chunk
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "m.bin", sha256="0" * 8)


def test_unreachable_host(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1"):
        download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", sha256="0" * 8, timeout_s=5)
