"""OpenAPI import: each operation of an OpenAPI 3 document becomes a tool the model can call.

Calls go only to allowed hosts, are bounded in time (one hard deadline per call) and in size
(the response is streamed and cut off at a byte cap), and follow redirects only to allowed hosts.
Every failure becomes a ToolError whose message the model reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from bot.config import OpenAPISource
from bot.errors import ConfigError, ToolError
from plugins import Tool

log = logging.getLogger(__name__)

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
SAFE_METHODS = {"get", "head", "options"}
MAX_REF_DEPTH = 32
MAX_REDIRECTS = 3
MAX_DESCRIPTION = 1000


def tool_name(source: str, operation: str) -> str:
    """`<source>_<operation>` in snake case, within ^[a-z][a-z0-9_]{0,63}$ (also a /command)."""
    raw = f"{source}_{operation}"
    raw = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", raw).lower()
    name = re.sub(r"[^a-z0-9_]+", "_", raw).strip("_")
    name = re.sub(r"_+", "_", name)
    if not name or not name[0].isalpha():
        name = "t_" + name
    return name[:64].rstrip("_")


def _host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def host_allowed(url: str, allowed: list[str]) -> bool:
    """True if the URL is http(s) and its host (or host:port) is in the allow-list."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    with_port = f"{host}:{parts.port}" if parts.port else host
    names = {a.lower() for a in allowed}
    return host in names or with_port in names


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """Read a streamed response body, refusing more than `limit` bytes."""
    length = response.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ToolError(f"the response is too large ({int(length)} bytes; the limit is {limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ToolError(f"the response is too large (over the limit of {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def bounded_get(
    client: httpx.AsyncClient, method: str, url: str, allowed: list[str], limit: int,
    **kwargs: Any,
) -> tuple[httpx.Response, bytes]:
    """One request, following at most a few redirects and only to allowed hosts."""
    for _ in range(MAX_REDIRECTS + 1):
        if not host_allowed(url, allowed):
            raise ToolError(
                f"the host {_host_of(url) or url!r} is not allowed for this tool "
                f"(allowed: {', '.join(allowed) or 'none'})"
            )
        async with client.stream(method, url, **kwargs) as response:
            if response.is_redirect and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                if response.status_code in (301, 302, 303) and method != "HEAD":
                    method, kwargs = "GET", {k: v for k, v in kwargs.items()
                                             if k in ("headers", "params")}
                continue
            return response, await read_capped(response, limit)
    raise ToolError(f"too many redirects (more than {MAX_REDIRECTS})")


def _parse_document(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{where}: not JSON (install PyYAML for YAML documents)") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid JSON or YAML") from exc
    if not isinstance(data, dict) or not str(data.get("openapi", "")).startswith("3"):
        raise ConfigError(f"{where}: not an OpenAPI 3 document")
    return data


async def load_spec(source: OpenAPISource, client: httpx.AsyncClient | None = None
                    ) -> dict[str, Any]:
    """Read an OpenAPI document from a file or URL (same time and size caps as calls)."""
    where = source.spec
    if not where.startswith(("http://", "https://")):
        path = Path(where)
        try:
            if path.stat().st_size > source.max_response_bytes:
                raise ConfigError(f"{where}: larger than {source.max_response_bytes} bytes")
            return _parse_document(path.read_text(encoding="utf-8"), where)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from exc
    allowed = [_host_of(where), *source.allow_hosts]
    own = client is None
    client = client or httpx.AsyncClient(follow_redirects=False, timeout=source.timeout)
    try:
        async with asyncio.timeout(source.timeout):
            response, body = await bounded_get(client, "GET", where, allowed,
                                               source.max_response_bytes)
    except (ToolError, httpx.HTTPError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise ConfigError(f"{where}: could not be fetched: {reason}") from exc
    finally:
        if own:
            await client.aclose()
    if response.status_code >= 400:
        raise ConfigError(f"{where}: HTTP {response.status_code}")
    return _parse_document(body.decode("utf-8", "replace"), where)


def resolve_refs(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """Inline local `#/...` references, to a bounded depth; remote references are refused."""
    if depth > MAX_REF_DEPTH:
        return {}
    if isinstance(node, list):
        return [resolve_refs(item, root, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#/"):
            raise ConfigError(f"remote reference {ref!r} is not supported")
        target: Any = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise ConfigError(f"reference {ref!r} points at nothing")
            target = target[part]
        return resolve_refs(target, root, depth + 1)
    return {k: resolve_refs(v, root, depth + 1) for k, v in node.items()}


def _schema(node: Any) -> dict[str, Any]:
    """A JSON schema cleaned of OpenAPI-only keys the model does not need."""
    if not isinstance(node, dict):
        return {}
    drop = {"xml", "externalDocs", "example", "examples", "discriminator", "readOnly",
            "writeOnly", "deprecated", "nullable"}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in drop or key.startswith("x-"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {k: _schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _schema(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [_schema(v) for v in value]
        else:
            out[key] = value
    return out


class Operation:
    """One OpenAPI operation and how to turn tool arguments into its HTTP request."""

    def __init__(self, method: str, path: str, op: dict[str, Any], shared: list[Any]) -> None:
        self.method = method
        self.path = path
        self.op = op
        params: dict[tuple[str, str], dict[str, Any]] = {}
        for param in [*shared, *op.get("parameters", [])]:
            if isinstance(param, dict) and param.get("in") in ("path", "query", "header"):
                params[(param["name"], param["in"])] = param
        self.params = list(params.values())
        self.body: dict[str, Any] | None = None
        self.body_required = False
        body = op.get("requestBody")
        if isinstance(body, dict):
            content = body.get("content", {})
            media = next((m for m in content if m.split(";")[0].strip().endswith("json")), None)
            if media is not None:
                self.body = _schema(content[media].get("schema", {}))
                self.body_required = bool(body.get("required"))

    def parameters(self) -> dict[str, Any]:
        """The tool's JSON schema: path, query and header parameters, and `body`."""
        properties: dict[str, Any] = {}
        required: list[str] = []
        for param in self.params:
            schema = _schema(param.get("schema", {"type": "string"}))
            if param.get("description"):
                schema["description"] = str(param["description"])[:MAX_DESCRIPTION]
            properties[param["name"]] = schema
            if param.get("required") or param["in"] == "path":
                required.append(param["name"])
        if self.body is not None:
            name = "body" if "body" not in properties else "request_body"
            properties[name] = {**self.body, "description": "The JSON request body."}
            if self.body_required:
                required.append(name)
        return {"type": "object", "properties": properties, "required": required,
                "additionalProperties": False}

    def description(self) -> str:
        """What the model reads: summary, description and the HTTP route."""
        parts = [str(self.op.get(k, "")).strip() for k in ("summary", "description")]
        text = "\n\n".join(p for p in parts if p) or f"Call {self.method.upper()} {self.path}."
        return f"{text[:MAX_DESCRIPTION]}\n({self.method.upper()} {self.path})"

    def request(self, base_url: str, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The URL and httpx keyword arguments for one call."""
        path = self.path
        query: dict[str, Any] = {}
        headers: dict[str, str] = {}
        for param in self.params:
            name = param["name"]
            if name not in arguments:
                continue
            value = arguments[name]
            if param["in"] == "path":
                if str(value) in ("", ".", ".."):
                    raise ToolError(f"the path parameter {name} cannot be {str(value)!r}")
                path = path.replace("{" + name + "}", quote(str(value), safe=""))
            elif param["in"] == "query":
                query[name] = json.dumps(value) if isinstance(value, (dict, bool)) else value
            else:
                headers[name] = str(value)
        if "{" in path:
            raise ToolError(f"missing path parameter(s) in {path}")
        kwargs: dict[str, Any] = {"params": query, "headers": headers}
        body_name = "request_body" if any(p["name"] == "body" for p in self.params) else "body"
        if self.body is not None and body_name in arguments:
            kwargs["json"] = arguments[body_name]
        return base_url.rstrip("/") + "/" + path.lstrip("/"), kwargs


def _result_text(response: httpx.Response, body: bytes) -> str:
    text = body.decode(response.encoding or "utf-8", "replace")
    if "json" in response.headers.get("content-type", ""):
        try:
            text = json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
        except ValueError:
            pass
    return text


def make_caller(name: str, source: OpenAPISource, operation: Operation, base_url: str,
                allowed: list[str], client: httpx.AsyncClient) -> Any:
    """The async function a Tool runs: one bounded HTTP call of the operation."""

    async def call(**arguments: Any) -> str:
        url, kwargs = operation.request(base_url, arguments)
        configured = {k: v.get_secret_value() for k, v in source.headers.items()}
        kwargs["headers"] = {**kwargs["headers"], **configured}  # configured auth wins
        log.info("tool %s: %s %s", name, operation.method.upper(), operation.path)
        try:
            async with asyncio.timeout(source.timeout):
                response, body = await bounded_get(
                    client, operation.method.upper(), url, allowed, source.max_response_bytes,
                    **kwargs,
                )
        except TimeoutError as exc:
            raise ToolError(f"the API did not answer within {source.timeout:g} seconds") from exc
        except httpx.HTTPError as exc:
            raise ToolError(f"the API could not be reached: {type(exc).__name__}") from exc
        text = _result_text(response, body)
        if response.status_code >= 400:
            raise ToolError(f"the API answered HTTP {response.status_code}: {text[:500]}")
        return text or f"HTTP {response.status_code} (no content)"

    call.__knowbot_confirm__ = (  # type: ignore[attr-defined]
        source.confirm if source.confirm is not None else operation.method not in SAFE_METHODS
    )
    return call


def build_tools(name: str, source: OpenAPISource, document: dict[str, Any],
                client: httpx.AsyncClient) -> list[Tool]:
    """Every (allowed) operation of a loaded document as a Tool with origin "openapi:<name>"."""
    servers = document.get("servers") or [{}]
    base_url = source.base_url or str(servers[0].get("url", ""))
    if source.base_url is None and base_url and not base_url.startswith(("http://", "https://")):
        base_url = urljoin(source.spec, base_url) if source.spec.startswith("http") else ""
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"openapi.{name}: no absolute base URL (set base_url)")
    allowed = source.allow_hosts or [_host_of(base_url)]
    wanted = set(source.operations) if source.operations is not None else None
    tools: list[Tool] = []
    for path, item in (document.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        item = resolve_refs(item, document)
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            op_id = str(op.get("operationId") or f"{method}_{path}")
            if wanted is not None and op_id not in wanted:
                continue
            operation = Operation(method, path, op, item.get("parameters", []))
            tname = tool_name(name, op_id)
            tools.append(Tool(
                name=tname,
                description=operation.description(),
                parameters=operation.parameters(),
                func=make_caller(tname, source, operation, base_url, allowed, client),
                origin=f"openapi:{name}",
            ))
    return tools


class OpenAPITools:
    """The tools of every configured OpenAPI source, and the HTTP client they share."""

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(follow_redirects=False)
        self.tools: list[Tool] = []

    @classmethod
    async def load(cls, sources: dict[str, OpenAPISource]) -> "OpenAPITools":
        """Load every source; one that fails is logged and skipped."""
        loaded = cls()
        for name, source in sources.items():
            try:
                document = await load_spec(source, loaded.client)
                tools = build_tools(name, source, document, loaded.client)
            except ConfigError as exc:
                log.error("OpenAPI source %s skipped: %s", name, exc)
                continue
            log.info("OpenAPI source %s: %d tool(s)", name, len(tools))
            loaded.tools.extend(tools)
        return loaded

    async def aclose(self) -> None:
        """Close the shared HTTP client."""
        await self.client.aclose()
