"""A small OpenAPI 3 document for the REST endpoints (served at /openapi.json)."""
from __future__ import annotations

_JSON = {"application/json": {"schema": {"type": "object"}}}
_OK = {"200": {"description": "OK", "content": _JSON}, "400": {"description": "bad request"},
       "401": {"description": "missing or wrong bearer token"}, "404": {"description": "no such model or version"}}
_NAME = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "shipyard serve", "version": "1"},
    "paths": {
        "/v1/models/{model}": {"get": {"parameters": [_NAME], "responses": _OK}},
        "/v1/models/{model}/versions/{version}": {"get": {"parameters": [_NAME, _VERSION], "responses": _OK}},
        "/v1/models/{model}/metadata": {"get": {"parameters": [_NAME], "responses": _OK}},
        "/v1/models/{model}:predict": {"post": {"parameters": [_NAME], "requestBody": {"content": _JSON},
                                                 "responses": _OK | {"429": {"description": "queue full"}}}},
        "/v2/health/live": {"get": {"responses": _OK}},
        "/v2/health/ready": {"get": {"responses": _OK | {"503": {"description": "not ready"}}}},
        "/v2": {"get": {"responses": _OK}},
        "/v2/models/{model}": {"get": {"parameters": [_NAME], "responses": _OK}},
        "/v2/models/{model}/ready": {"get": {"parameters": [_NAME], "responses": _OK}},
        "/v2/models/{model}/infer": {"post": {"parameters": [_NAME], "requestBody": {"content": _JSON},
                                               "responses": _OK | {"429": {"description": "queue full"}}}},
        "/v2/models/{model}/versions/{version}/infer": {
            "post": {"parameters": [_NAME, _VERSION], "requestBody": {"content": _JSON}, "responses": _OK}},
        "/v1/models/{model}:classify": {"post": {"parameters": [_NAME], "requestBody": {"content": _JSON}, "responses": _OK}},
        "/v1/models/{model}:regress": {"post": {"parameters": [_NAME], "requestBody": {"content": _JSON}, "responses": _OK}},
        "/v2/models/{model}/config": {"get": {"parameters": [_NAME], "responses": _OK}},
        "/v2/models/{model}/versions/{version}/config": {"get": {"parameters": [_NAME, _VERSION], "responses": _OK}},
        "/v2/models/stats": {"get": {"responses": _OK}},
        "/v2/models/{model}/stats": {"get": {"parameters": [_NAME], "responses": _OK}},
        "/v2/models/{model}/versions/{version}/stats": {"get": {"parameters": [_NAME, _VERSION], "responses": _OK}},
        "/v2/repository/index": {"post": {"requestBody": {"content": _JSON}, "responses": _OK}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text format"}}}},
    },
}
