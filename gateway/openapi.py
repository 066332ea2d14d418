"""The OpenAPI 3.1 document of the HTTP API (``GET /api/v1/openapi.json``), written as data.

Kept next to the routes of ``gateway/http_api.py`` by a test
(tests/http/test_openapi.py): every route is documented and every documented
path is routed, and the document validates as OpenAPI 3.1.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from protocol import ErrorCode

from . import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_SID = {
    "name": "sid",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}
_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The protocol's rid: the same key gets the first outcome again, and nothing is done twice.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
}
_COMMON_ERRORS = {
    "400": _error("bad_frame: the body or a parameter is malformed"),
    "401": _error("unauthorized: missing or bad credentials (with an auth hook)"),
    "403": _error("forbidden: a viewer, or a cross-origin request / Host the front door refuses; refused: middleware"),
    "429": _error("rate_limited: over the client's rate; retry after Retry-After"),
    "503": _error("unavailable / shutdown / inbox_full: retry after Retry-After"),
}
_REQUEST_ERRORS = {
    **_COMMON_ERRORS,
    "404": _error("no_session, unknown_ask"),
    "409": _error("ask_closed (a reply), ended (a send or cancel)"),
    "413": _error("too_big: the body is over max_frame"),
    "421": _error("not_here: the run's agent is on a node this one cannot reach"),
    "422": _error("bad_value: not one of the ask's choices, or a value that cannot travel"),
}


def _openai_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("OpenAIError")}}}


_OPENAI_COMMON = {
    "401": _openai_error("unauthorized"),
    "403": _openai_error("forbidden: a viewer (chat), or a cross-origin request / Host the front door refuses"),
    "429": _openai_error("rate_limited: retry after Retry-After"),
    "503": _openai_error("unavailable / shutdown: retry after Retry-After"),
}
_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string", "description": "an app's name"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
_OK = _json(
    {
        "type": "object",
        "required": ["ok", "rid"],
        "properties": {"ok": {"const": True}, "rid": {"type": "string"}},
    },
    "done (or done before, by the same Idempotency-Key)",
)

_DOC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "wirepipe HTTP API",
        "version": __version__,
        "description": (
            "REST and Server-Sent Events over a wirepipe gateway's sessions (docs/http.md). "
            "The same origin answers the WebSocket protocol: a GET upgrade at the gateway's root "
            "(or the mount's), subprotocol wirepipe.v1, MessagePack frames (docs/protocol.md); "
            "OpenAPI does not describe WebSockets."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{}, {"bearer": []}],
    "paths": {
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [{}],
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
            }
        },
        "/api/v1/apps": {
            "get": {
                "operationId": "listApps",
                "summary": "The registered apps a run can be started of",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"apps": {"type": "array", "items": {"type": "string"}}}},
                        "app names",
                    ),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/api/v1/sessions": {
            "get": {
                "operationId": "listSessions",
                "summary": "The runs this node writes",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["sessions"],
                            "properties": {"sessions": {"type": "array", "items": _ref("Session")}},
                        },
                        "sessions",
                    ),
                    **_COMMON_ERRORS,
                },
            },
            "post": {
                "operationId": "startRun",
                "summary": "Start a run of a registered app (hello.start)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["sid", "app"],
                                "properties": {"sid": {"type": "string"}, "app": {"type": "string"}, "input": {}},
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(_ref("Started"), "started here"),
                    "202": _json(_ref("Started"), "queued for a worker that runs the app (epoch null)"),
                    **_COMMON_ERRORS,
                    "404": _error("no_app"),
                    "409": _error("sid_taken: the sid has a run that has not ended"),
                    "413": _error("too_big"),
                    "422": _error("bad_value"),
                },
            },
        },
        "/api/v1/sessions/{sid}": {
            "parameters": [_SID],
            "get": {
                "operationId": "getSession",
                "summary": "One session and its snapshot",
                "responses": {
                    "200": _json(_ref("SessionDetail"), "the session"),
                    **_COMMON_ERRORS,
                    "404": _error("no_session"),
                },
            },
        },
        "/api/v1/sessions/{sid}/asks/{ask}": {
            "parameters": [_SID, {"name": "ask", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": {
                "operationId": "answerAsk",
                "summary": "Answer an open ask (the protocol's reply; the design note's confirm)",
                "parameters": [_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "required": ["value"], "properties": {"value": {}}}
                        }
                    },
                },
                "responses": {"200": _OK, **_REQUEST_ERRORS},
            },
        },
        "/api/v1/sessions/{sid}/messages": {
            "parameters": [_SID],
            "post": {
                "operationId": "sendMessage",
                "summary": "A message to the agent (the protocol's send)",
                "parameters": [_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "required": ["data"], "properties": {"data": {}}}
                        }
                    },
                },
                "responses": {"200": _OK, **_REQUEST_ERRORS},
            },
        },
        "/api/v1/sessions/{sid}/cancel": {
            "parameters": [_SID],
            "post": {
                "operationId": "cancelRun",
                "summary": "Ask the run to stop (the protocol's cancel)",
                "parameters": [_KEY],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string"}}}}
                    },
                },
                "responses": {"200": _OK, **_REQUEST_ERRORS},
            },
        },
        "/api/v1/sessions/{sid}/events": {
            "parameters": [_SID],
            "get": {
                "operationId": "followEvents",
                "summary": "The session's events as Server-Sent Events, resumable by Last-Event-ID",
                "description": (
                    "Each event: `id: <epoch>:<seq>` and `data:` one JSON object {seq, k, ts, d}. "
                    "`event: reset` carries {sid, epoch, first, head, reason, snapshot} when the stream "
                    "starts afresh or cannot resume. `: ping` comments keep it alive."
                ),
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                    {"name": "last_event_id", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "live", "in": "query", "required": False, "schema": {"enum": ["0", "1", "true"]}},
                    {
                        "name": "auth",
                        "in": "query",
                        "required": False,
                        "description": "The credential, for EventSource (which sends no Authorization header).",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_COMMON_ERRORS,
                    "404": _error("no_session"),
                },
            },
        },
        "/v1/models": {
            "get": {
                "operationId": "openaiListModels",
                "summary": "OpenAI-compatible: the apps, as models (docs/openai.md)",
                "tags": ["openai"],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["object", "data"],
                            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}},
                        },
                        "the models",
                    ),
                    **_OPENAI_COMMON,
                },
            }
        },
        "/v1/models/{model}": {
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "operationId": "openaiGetModel",
                "summary": "OpenAI-compatible: one app, as a model",
                "tags": ["openai"],
                "responses": {"200": _json(_MODEL, "the model"), **_OPENAI_COMMON, "404": _openai_error("no_app")},
            },
        },
        "/v1/chat/completions": {
            "post": {
                "operationId": "openaiChatCompletions",
                "summary": "OpenAI-compatible: start, answer or message a run from any chat client (docs/openai.md)",
                "description": (
                    "`model` names an app; the last user message is a new run's input, the answer to the "
                    "run's open ask, or a message to the agent, in the conversation's session (the "
                    "X-Wirepipe-Session header, or the session line of an assistant message). The reply "
                    "renders the run as markdown until it asks or ends, then finish_reason `stop` and the "
                    "`wirepipe` extension {session, epoch, state, ask}."
                ),
                "tags": ["openai"],
                "parameters": [
                    _KEY,
                    {
                        "name": "X-Wirepipe-Session",
                        "in": "header",
                        "required": False,
                        "description": "The conversation's session (sid); otherwise found in the messages.",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model", "messages"],
                                "properties": {
                                    "model": {"type": "string"},
                                    "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                                    "stream": {"type": "boolean"},
                                    "stream_options": {
                                        "type": "object",
                                        "properties": {"include_usage": {"type": "boolean"}},
                                    },
                                    "wirepipe": {
                                        "type": "object",
                                        "properties": {
                                            "input": {"description": "a new run's input instead of the message"},
                                            "log_level": {
                                                "enum": [
                                                    "TRACE",
                                                    "DEBUG",
                                                    "INFO",
                                                    "SUCCESS",
                                                    "WARNING",
                                                    "ERROR",
                                                    "CRITICAL",
                                                    "NONE",
                                                ]
                                            },
                                        },
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": (
                            "a chat.completion, or with stream: chat.completion.chunk events (`data: {...}`), "
                            "then `data: [DONE]`"
                        ),
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_OPENAI_COMMON,
                    "400": _openai_error("bad_frame: no model, no messages, no user message, a bad header"),
                    "404": _openai_error("no_app: the model names no app"),
                    "409": _openai_error("sid_taken, ask_closed"),
                    "413": _openai_error("too_big"),
                    "422": _openai_error("bad_value: the message is not one of the ask's choices"),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "The credential hello.auth carries (an operator or viewer token).",
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"enum": [c.value for c in ErrorCode]},
                            "message": {"type": "string"},
                        },
                    },
                    "rid": {"type": "string"},
                },
            },
            "OpenAIError": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "param", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"enum": [c.value for c in ErrorCode]},
                        },
                    }
                },
            },
            "Started": {
                "type": "object",
                "required": ["sid", "app", "epoch"],
                "properties": {
                    "sid": {"type": "string"},
                    "app": {"type": "string"},
                    "epoch": {"type": ["string", "null"]},
                },
            },
            "Session": {
                "type": "object",
                "required": ["sid", "epoch", "state", "app", "started", "first", "head", "ended", "asks"],
                "properties": {
                    "sid": {"type": "string"},
                    "epoch": {"type": "string"},
                    "state": {"type": ["string", "null"], "description": "the latest status's state"},
                    "app": {"type": ["string", "null"]},
                    "started": {"type": ["number", "null"], "description": "Unix time"},
                    "first": {"type": "integer"},
                    "head": {"type": "integer"},
                    "ended": {"type": "boolean"},
                    "asks": {"type": "array", "items": {"type": "object"}, "description": "open asks"},
                },
            },
            "SessionDetail": {
                "allOf": [
                    _ref("Session"),
                    {
                        "type": "object",
                        "required": ["snapshot", "snapshot_head"],
                        "properties": {
                            "snapshot": {"type": "object", "description": "docs/protocol.md section 4"},
                            "snapshot_head": {"type": "integer", "description": "the seq the snapshot is as of"},
                        },
                    },
                ]
            },
        },
    },
}


def openapi(root_path: str = "") -> dict[str, Any]:
    """The document, its server the mount point ``root_path`` (``""`` at the root)."""
    doc = copy.deepcopy(_DOC)
    doc["servers"] = [{"url": root_path or "/"}]
    return doc
