"""A tiny HTTP server with full ``Range`` support (single and multi-range: multipart/byteranges).

Python's ``http.server`` ignores ``Range``. Run as ``python range_server.py ROOT LOG``: serves ROOT on
127.0.0.1 (a free port, printed on stdout), appends one JSON line per request to LOG. It runs in
its own process: GDAL's reads hold the GIL of the process that opens the file, so an in-process
server thread could not answer them.
"""

from __future__ import annotations

import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class RangeServer(ThreadingHTTPServer):
    root: Path
    log_path: str


class RangeHandler(BaseHTTPRequestHandler):
    server: RangeServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.server.root / self.path.split("?")[0].lstrip("/")
        entry: dict[str, Any] = {
            "method": self.command,
            "path": self.path,
            "range": self.headers.get("Range"),
            "sent": 0,
        }
        self._entry = entry
        if not path.is_file():
            self.send_error(404)
            with open(self.server.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            return
        data = path.read_bytes()
        ctype = "application/json" if path.suffix == ".json" else "image/tiff"
        rng = self.headers.get("Range")
        if not rng:
            self._reply(200, data, ctype, body, entry)
            return
        parts = []
        for a, b in re.findall(r"(\d*)-(\d*)", rng.split("=", 1)[1]):
            lo = int(a) if a else len(data) - int(b)
            hi = min(int(b), len(data) - 1) if a and b else len(data) - 1
            parts.append((lo, hi))
        if len(parts) == 1:
            lo, hi = parts[0]
            self._reply(206, data[lo : hi + 1], ctype, body, entry, {"Content-Range": f"bytes {lo}-{hi}/{len(data)}"})
            return
        boundary = "geosegtestboundary"
        chunks = []
        for lo, hi in parts:
            head = f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {lo}-{hi}/{len(data)}\r\n\r\n"
            chunks.append(head.encode() + data[lo : hi + 1] + b"\r\n")
        payload = b"".join(chunks) + f"--{boundary}--\r\n".encode()
        self._reply(206, payload, f"multipart/byteranges; boundary={boundary}", body, entry)

    def _reply(self, code: int, payload: bytes, ctype: str, body: bool, entry: dict[str, Any], extra=None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(payload)
            entry["sent"] = len(payload)
        with open(self.server.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    srv = RangeServer(("127.0.0.1", 0), RangeHandler)
    srv.root, srv.log_path = Path(sys.argv[1]), sys.argv[2]
    print(srv.server_address[1], flush=True)
    srv.serve_forever()
