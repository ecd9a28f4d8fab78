"""The ingest API's OpenAPI 3.0 document (served at /api/v1/openapi.json).

Written by hand so it says exactly what pool.ingest enforces; tests fuzz the API from it.
"""

from __future__ import annotations

from django.conf import settings

MAX_SAFE_INT = 2**53 - 1

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What was wrong, naming the field."}},
}


def _reply(description: str, schema: dict | None = None) -> dict:
    body = {"application/json": {"schema": schema or {"$ref": "#/components/schemas/Error"}}}
    return {"description": description, "content": body}


def openapi_document(server_url: str) -> dict:
    session_id = {
        "name": "session_id",
        "in": "path",
        "required": True,
        "description": "Chosen by the client, unique per customer.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    }
    unavailable = _reply("Database unavailable; retry after the Retry-After header's seconds.")
    unavailable["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Onramp ingest API",
            "version": "1",
            "description": "Session-replay recorders send rrweb events per session. "
            "Authenticate with `Authorization: Bearer <ingest key>`.",
        },
        "servers": [{"url": server_url}],
        "security": [{"ingestKey": []}],
        "paths": {
            "/api/v1/sessions/{session_id}/payloads": {
                "post": {
                    "operationId": "createPayload",
                    "summary": "Send one payload of a session's events",
                    "parameters": [session_id],
                    "requestBody": {
                        "required": True,
                        "description": "JSON, optionally with Content-Encoding: gzip. At most "
                        f"{settings.INGEST_MAX_BYTES} bytes, before and after decompression.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Payload"}}
                        },
                    },
                    "responses": {
                        "202": _reply("Accepted", {"$ref": "#/components/schemas/Accepted"}),
                        "200": _reply(
                            "This payload_id was already stored; nothing was duplicated.",
                            {"$ref": "#/components/schemas/Accepted"},
                        ),
                        "400": _reply(
                            "Malformed JSON, gzip or schema; the message names the field."
                        ),
                        "401": _reply("Missing, unknown or revoked ingest key."),
                        "405": _reply("Method not allowed."),
                        "411": _reply(
                            "A chunked body (no Content-Length) that this server cannot "
                            "delimit; behind gunicorn chunked bodies are accepted."
                        ),
                        "413": _reply(
                            "Body over the size limit (checked after decompression too)."
                        ),
                        "415": _reply("Content-Type is not application/json, or unknown encoding."),
                        "503": unavailable,
                    },
                }
            },
            "/api/v1/sessions/{session_id}": {
                "get": {
                    "operationId": "getSession",
                    "summary": "A session's state and computed fields",
                    "parameters": [session_id],
                    "responses": {
                        "200": _reply("The session", {"$ref": "#/components/schemas/Session"}),
                        "400": _reply("Invalid session_id."),
                        "401": _reply("Missing, unknown or revoked ingest key."),
                        "404": _reply("No such session for this key's customer."),
                        "405": _reply("Method not allowed."),
                        "503": unavailable,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"ingestKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Event": {
                    "type": "object",
                    "required": ["type", "data", "timestamp"],
                    "properties": {
                        "type": {"type": "integer", "minimum": 0, "maximum": 255},
                        "data": {"type": "object"},
                        "timestamp": {"type": "number", "minimum": 0, "maximum": MAX_SAFE_INT},
                    },
                },
                "ClientError": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string"},
                        "timestamp": {"type": "number", "minimum": 0, "maximum": MAX_SAFE_INT},
                    },
                },
                "Payload": {
                    "type": "object",
                    "required": ["payload_id", "events"],
                    "properties": {
                        "payload_id": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INT},
                        "events": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Event"},
                        },
                        "errors": {
                            "type": "array",
                            # pool.ingest takes null as "no errors", like a missing field.
                            "nullable": True,
                            "items": {"$ref": "#/components/schemas/ClientError"},
                        },
                        "final": {"type": "boolean", "default": False},
                    },
                },
                "Accepted": {
                    "type": "object",
                    "properties": {
                        "session_id": {"type": "string"},
                        "payload_id": {"type": "integer"},
                        "status": {"type": "string", "enum": ["accepted", "duplicate"]},
                        "state": {"type": "string"},
                    },
                },
                "Session": {
                    "type": "object",
                    "properties": {
                        "session_id": {"type": "string"},
                        "state": {
                            "type": "string",
                            "enum": [
                                "open",
                                "ready",
                                "queued",
                                "processing",
                                "processed",
                                "failed",
                            ],
                        },
                        "payload_count": {"type": "integer"},
                        "attempts": {"type": "integer"},
                        "last_error": {"type": "string", "nullable": True},
                        "computed": {"type": "object", "nullable": True},
                    },
                },
            },
        },
    }
