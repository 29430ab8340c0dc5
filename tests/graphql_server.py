"""A local stand-in for W&B's GraphQL endpoint on 127.0.0.1: it records every request and answers
the few queries that saving a workspace and a report makes (viewer, projects, upsertView). Only
for tests: it checks what would be sent, not what the real service would do with it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class GraphQLRecorder:
    def __init__(self, entity: str = "ent", project: str = "cifar-tune") -> None:
        self.entity, self.project = entity, project
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(body) if body.startswith(b"{") else {}
                if self.path.endswith("/graphql"):
                    recorder.requests.append(request)
                reply = json.dumps({"data": recorder.answer(request)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        query, variables = request.get("query", ""), request.get("variables") or {}
        if "upsertView" in query:
            saved = len([r for r in self.requests if "upsertView" in r.get("query", "")])
            return {"upsertView": {"inserted": True, "view": {
                "id": f"view{saved}", "name": variables.get("name") or f"nw-{saved}",
                "displayName": variables.get("displayName", ""), "description": variables.get("description", ""),
                "spec": variables.get("spec", "{}"), "createdAt": "2026-12-03T00:00:00",
                "updatedAt": "2026-12-03T00:00:00",
                "project": {"id": "p1", "name": self.project, "entityName": self.entity}}}}
        if "internalId" in query:
            return {"project": {"id": "p1", "internalId": "p1"}}
        if "viewer" in query:
            return {"viewer": {"id": "u1", "entity": self.entity, "username": "tester", "email": "", "flags": "{}",
                               "admin": False, "teams": {"edges": []}}}
        if "projects" in query or "models" in query:
            node = {"id": "p1", "name": self.project, "entityName": self.entity, "createdAt": "2026-12-03T00:00:00",
                    "isBenchmark": False, "__typename": "Project", "user": None}
            return {"models": {"edges": [{"node": node, "cursor": "c"}], "pageInfo": {"endCursor": "c",
                                                                                       "hasNextPage": False}}}
        return {}

    def views(self) -> list[dict[str, Any]]:
        """The upsertView mutations received, their spec parsed."""
        return [{**r["variables"], "spec": json.loads(r["variables"]["spec"])} for r in self.requests
                if "upsertView" in r.get("query", "")]

    def __enter__(self) -> GraphQLRecorder:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
