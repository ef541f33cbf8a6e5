"""Knowledge from WeChat: an admin's shared article, and the one-time upload page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from channels.wechat_planner import Timings
from fake_wechat import serve
from test_wechat import ADMIN, USER, wechat_bot

ARTICLE = """<!doctype html><html><head><title>Travel policy</title></head><body><article>
<h1>Travel policy</h1>
<p>Employees book flights through the Skyline travel desk at least fourteen days ahead.</p>
<p>Hotel stays are reimbursed up to 180 euros per night in Berlin and 150 elsewhere.</p>
</article></body></html>"""

# Link ingest loads the embedding model and may outlast WeChat's window: real timings here.
SLOWER = Timings(window=4.3, platform_timeout=5.0, requests_per_message=3)


async def article(request: Any) -> HTMLResponse:
    """The article a user shares."""
    return HTMLResponse(ARTICLE)


async def test_admin_link_is_ingested_and_then_answered(tmp_path: Path, embedder: Any) -> None:
    site = Starlette(routes=[Route("/travel", article)])
    async with serve(site) as site_url, wechat_bot(
            tmp_path, embedder=embedder, timings=SLOWER, ingest_allow_hosts=["127.0.0.1"]) as bot:
        receipt = await bot.wx.send(ADMIN, "link", Title="Travel policy",
                                    Description="how we travel", Url=f"{site_url}/travel")
        assert receipt.content is not None and "Added" in receipt.content, receipt
        assert "Travel policy" in receipt.content
        # another subscriber reads the account's knowledge base
        answer = await bot.wx.text(USER, "how much is a hotel night in Berlin reimbursed?")
        assert answer.content is not None
        assert "180 euros" in answer.content
        assert "[1] Travel policy" in answer.content


async def test_upload_link_is_one_time_and_ingests(tmp_path: Path, embedder: Any) -> None:
    async with wechat_bot(tmp_path, embedder=embedder, timings=SLOWER,
                          ingest_max_bytes=4096) as bot, httpx.AsyncClient() as http:
        got = await bot.wx.text(ADMIN, "/upload")
        assert got.content is not None
        found = re.search(r"(http://\S+/wechat/upload/\S+)", got.content)
        assert found is not None, got.content
        link = found.group(1)
        form = await http.get(link)
        assert form.status_code == 200 and 'type="file"' in form.text
        too_big = await http.post(link, files={"file": ("big.md", b"x" * 5000, "text/markdown")})
        assert too_big.status_code == 413
        broken = await http.post(link, files={"file": ("scan.pdf", b"%PDF-1.7 broken",
                                                       "application/pdf")})
        assert broken.status_code == 422  # nothing added, and the link still works
        doc = b"# Parking\n\nVisitors park in garage level minus two, spaces 40 to 55.\n"
        done = await http.post(link, files={"file": ("parking.md", doc, "text/markdown")})
        assert done.status_code == 200 and "Added" in done.text
        again = await http.post(link, files={"file": ("parking.md", doc, "text/markdown")})
        assert again.status_code == 410  # one time only
        assert (await http.get(link)).status_code == 410
        forged = await http.get(link[:-4] + "AAAA")
        assert forged.status_code == 410
        answer = await bot.wx.text(USER, "where do visitors park?")
        assert answer.content is not None and "garage level minus two" in answer.content


async def test_upload_needs_a_public_url(tmp_path: Path) -> None:
    async with wechat_bot(tmp_path, public_url=None) as bot:
        got = await bot.wx.text(ADMIN, "/upload")
        assert got.content is not None and "KNOWBOT_PUBLIC_URL" in got.content
