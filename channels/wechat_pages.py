"""Pages on Knowbot's own server for WeChat users: a full answer, and an upload form for admins.

Both are reached through signed, expiring links (bot/signing.py). An upload link also works
only once: its one-time id is taken from `runtime.state` when the file is posted.
"""

from __future__ import annotations

import html
import logging
import secrets
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from bot.errors import IngestError
from bot.signing import BadToken, LinkSigner
from bot.types import Reply
from channels.wechat_text import citation_lines, plain_text

if TYPE_CHECKING:
    from knowledge.service import KnowledgeService

log = logging.getLogger(__name__)

ANSWER_NS = "wechat:answer"
UPLOAD_NS = "wechat:upload"
ANSWER_TTL = 7 * 24 * 3600.0
UPLOAD_TTL = 30 * 60.0
ACCOUNT_KB = "account"
FORM_OVERHEAD = 64 * 1024  # multipart headers and boundaries around the file

_STYLE = ("body{font-family:-apple-system,'PingFang SC',sans-serif;max-width:42rem;margin:1rem auto;"
          "padding:0 1rem;line-height:1.6}pre{white-space:pre-wrap;font-family:inherit}"
          "li{margin-bottom:.5rem}.snippet{color:#555;font-size:.9em}")
_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "form-action 'self'", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff"}


def page(title: str, body: str, status: int = 200, refresh: int | None = None) -> HTMLResponse:
    """A small HTML page; `body` must already be escaped."""
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    doc = (f'<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" '
           f'content="width=device-width,initial-scale=1">{meta}<title>{html.escape(title)}'
           f"</title><style>{_STYLE}</style></head><body>{body}</body></html>")
    return HTMLResponse(doc, status_code=status, headers=_HEADERS)


def answer_html(reply: Reply) -> str:
    """The full answer and its citations as escaped HTML."""
    parts = [f"<h1>Answer</h1><pre>{html.escape(plain_text(reply.text))}</pre>"]
    if reply.citations:
        parts.append("<h2>Sources</h2><ol>")
        for c, line in zip(reply.citations, citation_lines(reply)):
            label = html.escape(line.split("] ", 1)[-1])
            if c.url.startswith(("http://", "https://")):
                label = f'<a href="{html.escape(c.url, quote=True)}" rel="noreferrer">{label}</a>'
            snippet = f'<div class="snippet">{html.escape(c.snippet)}</div>' if c.snippet else ""
            parts.append(f"<li>{label}{snippet}</li>")
        parts.append("</ol>")
    return "".join(parts)


class WeChatPages:
    """Signed links to answer pages and upload pages, and the routes that serve them."""

    def __init__(self, state, signer: LinkSigner, public_url: str | None,  # type: ignore[no-untyped-def]
                 account: str, max_bytes: int) -> None:
        self.state = state
        self.signer = signer
        self.public_url = public_url.rstrip("/") if public_url else None
        self.account = account
        self.max_bytes = max_bytes

    # ---- answer pages ---------------------------------------------------------------

    def reserve(self) -> tuple[str, str | None]:
        """A new answer-page id and its signed URL (None without KNOWBOT_PUBLIC_URL)."""
        page_id = secrets.token_urlsafe(12)
        if self.public_url is None:
            return page_id, None
        token = self.signer.sign("wechat-answer", {"id": page_id}, ANSWER_TTL)
        return page_id, f"{self.public_url}/wechat/answer/{token}"

    async def save(self, page_id: str, reply: Reply) -> None:
        """Keep a full answer for its page."""
        if self.public_url is not None:
            await self.state.put(ANSWER_NS, page_id, reply.to_record(), ttl=ANSWER_TTL)

    # ---- upload links ---------------------------------------------------------------

    async def upload_link(self, tenant: str, openid: str) -> str | None:
        """A one-time, expiring upload URL for an admin; None without KNOWBOT_PUBLIC_URL."""
        if self.public_url is None:
            return None
        nonce = secrets.token_urlsafe(16)
        await self.state.put(UPLOAD_NS, nonce, {"tenant": tenant, "openid": openid},
                             ttl=UPLOAD_TTL)
        token = self.signer.sign("wechat-upload", {"n": nonce}, UPLOAD_TTL)
        return f"{self.public_url}/wechat/upload/{token}"

    # ---- routes ---------------------------------------------------------------------

    def mount(self, app: FastAPI, knowledge: "KnowledgeService | None") -> None:
        """Add GET /wechat/answer/<token> and GET/POST /wechat/upload/<token>."""

        @app.get("/wechat/answer/{token}")
        async def answer_page(token: str) -> Response:
            try:
                payload = self.signer.verify("wechat-answer", token)
            except BadToken:
                return page("Link expired", "<p>This link is invalid or has expired.</p>", 404)
            entry = await self.state.get(ANSWER_NS, str(payload.get("id", "")))
            if entry is None:
                return page("Being prepared", "<p>The answer is still being prepared. This page "
                            "refreshes by itself.</p>", 200, refresh=10)
            return page("Answer", answer_html(Reply.from_record(entry.value)))

        @app.get("/wechat/upload/{token}")
        async def upload_form(token: str) -> Response:
            if await self._upload_grant(token, take=False) is None:
                return self._gone()
            body = ("<h1>Add a document</h1><p>It goes into this account's knowledge base.</p>"
                    f'<form method="post" enctype="multipart/form-data">'
                    '<input type="file" name="file" required> <button>Upload</button></form>'
                    f"<p>Up to {self.max_bytes // (1024 * 1024) or 1} MB. PDF, Word, Excel, "
                    "PowerPoint, Markdown, HTML or text.</p>")
            return page("Upload", body)

        @app.post("/wechat/upload/{token}")
        async def upload(token: str, request: Request) -> Response:
            if knowledge is None or not hasattr(knowledge, "ingest_bytes"):
                return page("Not available", "<p>Adding documents is not switched on.</p>", 503)
            if await self._upload_grant(token, take=False) is None:
                return self._gone()  # no body is read for a forged or used link
            declared = request.headers.get("content-length")
            limit = self.max_bytes + FORM_OVERHEAD
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                return self._too_big()
            body = bytearray()
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    return self._too_big()
            form = await _replay(request, bytes(body)).form(max_files=1, max_fields=4)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return page("No file", "<p>Choose a file to upload.</p>", 400)
            data = await upload.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                return self._too_big()
            grant = await self._upload_grant(token, take=True)
            if grant is None:
                return self._gone()
            name = upload.filename or "document"
            try:
                receipt = await knowledge.ingest_bytes(
                    grant["tenant"], ACCOUNT_KB, data, name, mime=upload.content_type or "",
                    added_by=grant["openid"], shared=True)
            except IngestError as exc:
                # nothing was added: the link works again (until its signature expires)
                nonce = str(self.signer.verify("wechat-upload", token).get("n", ""))
                await self.state.put(UPLOAD_NS, nonce, grant, ttl=UPLOAD_TTL)
                return page("Not added", f"<p>{html.escape(exc.user_message)}</p><p>You can "
                            "try another file with the same link.</p>", 422)
            log.info("upload page: a document was added to %s", grant["tenant"])
            return page("Added", f"<p>{html.escape(receipt.text())}</p>")

    async def _upload_grant(self, token: str, take: bool) -> dict[str, Any] | None:
        try:
            payload = self.signer.verify("wechat-upload", token)
        except BadToken:
            return None
        nonce = str(payload.get("n", ""))
        if take:
            value = await self.state.take(UPLOAD_NS, nonce)
        else:
            entry = await self.state.get(UPLOAD_NS, nonce)
            value = entry.value if entry is not None else None
        if not isinstance(value, dict) or not value.get("tenant", "").startswith("wechat:"):
            return None
        return value

    @staticmethod
    def _gone() -> HTMLResponse:
        return page("Link expired", "<p>This upload link is invalid, expired or already used. "
                    "Send /upload again for a new one.</p>", 410)

    def _too_big(self) -> HTMLResponse:
        mb = self.max_bytes / (1024 * 1024)
        return page("Too big", f"<p>That file is over the {mb:.0f} MB limit.</p>", 413)


def _replay(request: Request, body: bytes) -> Request:
    """A request whose body is `body`, already read and bounded."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)

