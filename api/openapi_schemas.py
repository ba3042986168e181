"""The OpenAPI document's component schemas, generated from the pydantic models (the
request bodies of requests.py, the answers of shapes.py), with what the models cannot say
patched in: the bounds the settings set (``max_replicas``, ``max_keep_for``), and the
rules a request body is checked by beyond its types (names, durations, reserved labels),
stated as the server applies them so that a generated case and the server agree."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .requests import (
    CONTAINER_NAME,
    DURATION,
    ENV_NAME,
    RESERVED_LABELS,
    RESERVED_NAMES,
    SERVICE_NAME,
    ActivityBody,
    RegisterBody,
    ReplicasBody,
    ScaleBody,
)
from .shapes import SHAPES

REF = "#/components/schemas/"
BODIES: dict[str, type[BaseModel]] = {
    "ActivityBody": ActivityBody,
    "ReplicasBody": ReplicasBody,
    "ScaleBody": ScaleBody,
    "RegisterBody": RegisterBody,
}


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": REF + name}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An answer in JSON with this schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_content(description: str) -> dict[str, Any]:
    """An error answer."""
    return json_content(ref("Error"), description)


NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
COMMON_ERRORS = {
    "400": error_content("Bad input: malformed JSON, wrong types, unknown fields or parameters"),
    "401": error_content("Missing or wrong bearer token (when api_token is set)"),
    "503": error_content("The Docker engine or the database is unavailable"),
}
AGENT_ERRORS = {
    **COMMON_ERRORS,
    "404": error_content("No managed agent of that name"),
    "409": error_content(
        "The operation does not apply to this agent; or (code capacity) a start would wake "
        "more than max_awake agents and none can be put to sleep"
    ),
    "502": error_content("The Docker engine refused the operation"),
}


def limit_param(maximum: int, default: int) -> dict[str, Any]:
    """A ``?limit=`` query parameter: 1..``maximum``."""
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
    }


def op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = False,
    tag: str = "agents",
) -> dict[str, Any]:
    """One operation: its summary, answers, parameters and body."""
    out: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": ref(body)}},
        }
        responses.setdefault("408", error_content("The body did not arrive within request_timeout"))
        responses.setdefault("413", error_content("The body is larger than max_body_bytes"))
    return out


def components(max_replicas: int, max_keep_for_s: float) -> dict[str, Any]:
    """Every component schema, for a server with these settings."""
    schemas: dict[str, Any] = {}
    for name, model in {**SHAPES, **BODIES}.items():
        schema = model.model_json_schema(ref_template=REF + "{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    schemas = _untitled(schemas)
    _patch_bodies(schemas, max_replicas, max_keep_for_s)
    return schemas


def _untitled(node: Any) -> Any:
    """Without pydantic's ``title``s (the component names say it)."""
    if isinstance(node, dict):
        return {
            k: _untitled(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def _patch_bodies(schemas: dict[str, Any], max_replicas: int, max_keep_for_s: float) -> None:
    schemas["ActivityBody"]["properties"]["keep_for"] = {
        "oneOf": [
            {"type": "number", "minimum": 0, "maximum": max_keep_for_s},
            {"type": "string", "pattern": keep_for_pattern(max_keep_for_s)},
            {"type": "null"},
        ],
        "description": "keep the agent awake this long from now: seconds, or a duration like "
        "'30m' (also compound: '1h30m'), at most max_keep_for (400 beyond it)",
    }
    schemas["ReplicasBody"]["properties"]["replicas"] = {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": max_replicas,
        "description": "a service's replicas (max_replicas at most); a container runs 1",
    }
    schemas["ScaleBody"]["properties"]["replicas"] = {
        "type": "integer",
        "minimum": 0,
        "maximum": max_replicas,
        "description": "a service: 0..max_replicas; a container: 0 or 1 (409 else)",
    }
    schemas["RegisterBody"] = _register_body(max_replicas)


def _register_body(max_replicas: int) -> dict[str, Any]:
    """A new agent: a container runs exactly 1 replica and takes a container name; a service
    takes 1..max_replicas and a service name (letters, digits and dashes)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "image"],
        "properties": {
            "name": {
                "type": "string",
                "not": {"enum": sorted(RESERVED_NAMES)},
                "description": "a Docker container name (2 to 128 characters); for a service: "
                "letters, digits and dashes only, at most 63; not `running` (a listing's path)",
            },
            "image": {
                "type": "string",
                "minLength": 1,
                "maxLength": 512,
                "description": "must match a pattern of allowed_images (403 otherwise)",
            },
            "command": {"type": ["array", "null"], "items": {"type": "string"}},
            "env": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": ENV_NAME.pattern},
                "additionalProperties": {"type": "string"},
            },
            "labels": {
                "type": ["object", "null"],
                "propertyNames": {"not": {"pattern": RESERVED_LABELS.pattern}},
                "additionalProperties": {"type": "string"},
                "description": "Docker's and idlewatch's own label prefixes are reserved",
            },
            "kind": {"type": "string", "enum": ["container", "service"], "default": "container"},
            "replicas": {"type": "integer", "minimum": 1, "maximum": max_replicas, "default": 1},
            "idle_timeout": {
                "oneOf": [
                    {"type": "number", "minimum": 0},
                    {"type": "string", "pattern": DURATION.pattern},
                    {"type": "null"},
                ],
                "description": "seconds, '15m', '1h30m', or 'never' (0 too); default: the "
                "idle_timeout setting",
            },
        },
        "if": {"required": ["kind"], "properties": {"kind": {"const": "service"}}},
        "then": {"properties": {"name": {"pattern": SERVICE_NAME.pattern}}},
        "else": {
            "properties": {"name": {"pattern": CONTAINER_NAME.pattern}, "replicas": {"const": 1}}
        },
    }


def _int_upto(limit: int) -> str:
    """An ECMA regex of the decimal integers 0..limit (no leading zeros)."""
    digits = str(limit)
    parts = ["0"]
    if len(digits) > 1:
        parts.append(f"[1-9][0-9]{{0,{len(digits) - 2}}}")
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            rest = len(digits) - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            parts.append(f"{digits[:i]}[{low}-{int(d) - 1}]{tail}")
    if limit > 0:
        parts.append(digits)
    return "(" + "|".join(parts) + ")"


def positive_duration_pattern(max_s: float) -> str:
    """:func:`keep_for_pattern` without zero (a timeout of 0 is refused)."""
    return "^(?! *0+(\\.0+)?([sSmMhHdD]|[mM][sS])? *$)" + keep_for_pattern(max_s)[1:]


def keep_for_pattern(max_s: float) -> str:
    """Durations up to ``max_s`` in one unit (what the document can bound; the server takes
    compound ones too, up to the same limit)."""
    whole = int(max_s)
    units = [
        ("", 1),
        ("[sS]", 1),
        ("[mM][sS]", 0.001),
        ("[mM]", 60),
        ("[hH]", 3600),
        ("[dD]", 86400),
    ]
    forms = [f"{_upto(int(whole / per))}{unit}" for unit, per in units]
    return "^ *(" + "|".join(forms) + ") *$"


def _upto(limit: int) -> str:
    """An ECMA regex of the decimal numbers 0..limit, fractions included (``0.5``)."""
    if limit == 0:
        return "0(\\.0+)?"
    return f"({_int_upto(limit - 1)}(\\.[0-9]+)?|{limit}(\\.0+)?)"


__all__ = [
    "AGENT_ERRORS",
    "COMMON_ERRORS",
    "NAME_PARAM",
    "REF",
    "op",
    "components",
    "error_content",
    "json_content",
    "keep_for_pattern",
    "limit_param",
    "positive_duration_pattern",
    "ref",
]
