"""Fetching links: a real HTTP server on loopback, and the guard that keeps Knowbot off internal addresses."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from typing import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from bot.errors import IngestError
from knowledge.fetch import fetch_url, is_blocked_address
from knowledge.loaders import load_bytes
from loopback import serve_in_thread

MB = 1024 * 1024
LOCAL = {"127.0.0.1"}

ARTICLE = """<!doctype html><html><head><title>Refund policy | Acme Help</title></head><body>
<div class="topbar"><a href="/">Home</a> <a href="/products">Products</a> <a href="/contact">Contact us</a></div>
<main><h1>Refund policy</h1>
<p>Customers can ask for a refund within 30 days of purchase by writing to support with their order number.</p>
<h2>Exceptions</h2><p>Gift cards and customised products cannot be refunded, except where the law requires it.</p>
</main><footer>© 2024 Acme Inc · Terms · Privacy</footer></body></html>"""

WECHAT = """<!DOCTYPE html><html><head><meta charset="utf-8"><title></title>
<meta property="og:title" content="公司年会通知"><meta property="og:type" content="article"></head>
<body id="activity-detail" class="zh_CN"><div class="rich_media_wrp"><div class="rich_media_area_primary">
<h1 class="rich_media_title" id="activity-name">
  公司年会通知
</h1>
<div id="meta_content"><span class="rich_media_meta">行政部</span><em id="publish_time">2024-01-05</em>
<a id="js_name">ACME 公众号</a></div>
<div class="rich_media_content js_underline_content" id="js_content" style="visibility: hidden;">
<section><p><span>各位同事：</span></p>
<p><span>年会将于1月20日晚上6点在</span><strong>国际会议中心</strong><span>举行。</span></p>
<section><h2>日程安排</h2><p>18:00 签到<br>18:30 晚宴</p></section>
<p><img data-src="https://mmbiz.qpic.cn/x.png"></p><p>请准时参加。</p></section>
<script>var appmsg_token = "abc";</script></div>
<div id="js_pc_qr_code"><p>微信扫一扫关注该公众号</p></div>
<div class="rich_media_tool"><a id="js_view_source">阅读原文</a><span>阅读 1.2万</span><span>赞</span></div>
</div></div><div id="js_related_area"><h3>喜欢此内容的人还喜欢</h3><p>另一篇文章</p></div></body></html>"""


# --- the loopback server -----------------------------------------------------------------------


async def slow(request: Request) -> StreamingResponse:
    async def trickle():
        yield b"<html><body><p>"
        for _ in range(600):
            await asyncio.sleep(0.1)
            yield b"."

    return StreamingResponse(trickle(), media_type="text/html")


async def big(request: Request) -> StreamingResponse:
    async def chunks():
        for _ in range(20 * 16):  # 20 MB in 64 KB chunks, no Content-Length
            yield b"a" * (64 * 1024)

    return StreamingResponse(chunks(), media_type="text/plain")


GZIP_BOMB = gzip.compress(b"\0" * (50 * MB), compresslevel=9)

ROUTES = [
    Route("/article", lambda r: Response(ARTICLE, media_type="text/html")),
    Route("/wechat", lambda r: Response(WECHAT.encode(), media_type="text/html; charset=utf-8")),
    Route("/slow", slow),
    Route("/big", big),
    Route("/big-declared", lambda r: Response(b"b" * (2 * MB), media_type="text/plain")),
    Route("/gzip-bomb", lambda r: Response(GZIP_BOMB, media_type="text/plain", headers={"Content-Encoding": "gzip"})),
    Route("/image", lambda r: Response(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, media_type="image/png")),
    Route("/to-metadata", lambda r: RedirectResponse("http://169.254.169.254/latest/meta-data/", 302)),
    Route("/to-article", lambda r: RedirectResponse("/article", 301)),
    Route("/loop", lambda r: RedirectResponse("/loop", 302)),
    Route("/missing", lambda r: Response("nope", status_code=404, media_type="text/plain")),
    Route("/download", lambda r: Response(
        "name,city\nAnn,北京\n".encode(), media_type="application/octet-stream",
        headers={"Content-Disposition": "attachment; filename*=UTF-8''%E5%90%8D%E5%8D%95.csv"},
    )),
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1; yields its base URL."""
    with serve_in_thread(Starlette(routes=ROUTES)) as url:
        yield url


async def refused(url: str, **kw) -> str:
    with pytest.raises(IngestError) as info:
        await fetch_url(url, **kw)
    message = info.value.user_message
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message
    return message


def fake_dns(table: dict[str, list[str]]):
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


# --- pages that load ---------------------------------------------------------------------------


async def test_article_page_is_fetched_and_read_without_chrome(server):
    page = await fetch_url(f"{server}/article", allow_hosts=LOCAL)
    assert page.url == f"{server}/article" and page.content_type.startswith("text/html")
    doc = load_bytes(page.data, page.filename, mime=page.content_type, url=page.url)
    assert (doc.kind, doc.title, doc.url) == ("html", "Refund policy | Acme Help", page.url)
    joined = " ".join(b.text for b in doc.blocks)
    assert "within 30 days of purchase" in joined
    assert "Contact us" not in joined and "Privacy" not in joined
    assert next(b for b in doc.blocks if "Gift cards" in b.text).location == "Refund policy > Exceptions"


async def test_wechat_article_yields_title_and_body_only(server):
    page = await fetch_url(f"{server}/wechat", allow_hosts=LOCAL)
    doc = load_bytes(page.data, page.filename, mime=page.content_type, url=page.url)
    assert doc.title == "公司年会通知"
    assert [b.text for b in doc.blocks] == [
        "各位同事：", "年会将于1月20日晚上6点在国际会议中心举行。", "日程安排", "18:00 签到\n18:30 晚宴", "请准时参加。",
    ]
    assert doc.blocks[3].location == "日程安排"
    joined = " ".join(b.text for b in doc.blocks)
    for chrome in ("微信扫一扫", "阅读原文", "喜欢此内容的人还喜欢", "另一篇文章", "行政部", "appmsg_token"):
        assert chrome not in joined


async def test_redirects_are_followed_and_the_final_url_reported(server):
    page = await fetch_url(f"{server}/to-article", allow_hosts=LOCAL)
    assert page.url == f"{server}/article" and b"Refund policy" in page.data


async def test_octet_stream_download_keeps_its_file_name_and_is_sniffed(server):
    page = await fetch_url(f"{server}/download", allow_hosts=LOCAL)
    assert page.filename == "名单.csv"
    doc = load_bytes(page.data, page.filename, mime=page.content_type, url=page.url)
    assert doc.kind == "csv" and doc.blocks[0].text == "name: Ann; city: 北京"


async def test_real_dns_resolution_of_an_allowed_name(server):
    port = server.rsplit(":", 1)[1]
    page = await fetch_url(f"http://localhost:{port}/article", allow_hosts={"localhost"})
    assert b"Refund policy" in page.data


async def test_browser_user_agent_and_pinned_ip_with_host_header_and_sni():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Content-Type": "text/plain"}, content=b"hello")

    dns = fake_dns({"docs.example.com": ["93.184.216.34"]})
    page = await fetch_url(
        "https://docs.example.com/guide.txt", resolver=dns, transport=httpx.MockTransport(handler)
    )
    request = seen[0]
    assert request.url.host == "93.184.216.34"  # connects to the address that was checked
    assert request.headers["host"] == "docs.example.com"
    assert request.extensions["sni_hostname"] == "docs.example.com"  # TLS name check stays on the name
    assert request.headers["user-agent"].startswith("Mozilla/5.0")
    assert (page.url, page.data, page.filename) == ("https://docs.example.com/guide.txt", b"hello", "guide.txt")


# --- the guard ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/article",
    "http://localhost:{port}/article",
    "http://10.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]/",
    "http://[fd00:ec2::254]/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://metadata.google.internal/computeMetadata/v1/",
])
async def test_internal_addresses_are_refused(server, url):
    message = await refused(url.format(port=server.rsplit(":", 1)[1]))
    assert "private or internal network address" in message


async def test_a_name_resolving_to_a_private_address_is_refused():
    def handler(request):
        raise AssertionError("must not connect")

    dns = fake_dns({"intranet.example.com": ["192.168.1.5"], "mixed.example.com": ["93.184.216.34", "10.1.2.3"]})
    for host in ("intranet.example.com", "mixed.example.com"):
        message = await refused(f"https://{host}/wiki", resolver=dns, transport=httpx.MockTransport(handler))
        assert message.startswith(f"Knowbot does not fetch {host} because it points to a private")


async def test_redirect_to_metadata_is_refused(server):
    assert "169.254.169.254" in await refused(f"{server}/to-metadata", allow_hosts=LOCAL)


async def test_every_redirect_hop_is_resolved_again():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "93.184.216.34"
        return httpx.Response(302, headers={"Location": "http://rebind.example.com/admin"})

    dns = fake_dns({"docs.example.com": ["93.184.216.34"], "rebind.example.com": ["10.0.0.5"]})
    message = await refused("http://docs.example.com/", resolver=dns, transport=httpx.MockTransport(handler))
    assert "rebind.example.com" in message and dns.calls == ["docs.example.com", "rebind.example.com"]


@pytest.mark.parametrize("url", ["ftp://example.com/file.pdf", "file:///etc/passwd", "javascript:alert(1)"])
async def test_only_http_and_https(url):
    assert "http:// and https://" in await refused(url)


def test_blocked_address_table():
    import ipaddress

    for addr in ("127.0.0.2", "10.1.1.1", "172.16.0.1", "192.168.0.1", "169.254.1.1", "100.127.255.255",
                 "0.0.0.0", "255.255.255.255", "239.1.1.1", "::", "::1", "fe80::1", "fc00::1", "ff02::1",
                 "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1"):
        assert is_blocked_address(ipaddress.ip_address(addr)), addr
    for addr in ("93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert not is_blocked_address(ipaddress.ip_address(addr)), addr


# --- limits ------------------------------------------------------------------------------------


async def test_trickling_page_hits_the_deadline(server):
    start = time.perf_counter()
    message = await refused(f"{server}/slow", allow_hosts=LOCAL, timeout=1)
    assert time.perf_counter() - start < 3
    assert message.startswith("The page did not finish loading within 1 second;")


async def test_large_page_hits_the_size_cap(server):
    message = await refused(f"{server}/big", allow_hosts=LOCAL, max_bytes=1 * MB)
    assert message.startswith("The page is larger than the 1 MB limit")
    assert "1 MB limit" in await refused(f"{server}/big-declared", allow_hosts=LOCAL, max_bytes=1 * MB)


async def test_gzip_bomb_stops_at_the_size_cap(server):
    assert "1 MB limit" in await refused(f"{server}/gzip-bomb", allow_hosts=LOCAL, max_bytes=1 * MB)


async def test_image_content_type_is_refused(server):
    message = await refused(f"{server}/image", allow_hosts=LOCAL)
    assert message.startswith("The link returns image/png, which Knowbot cannot read")


async def test_http_errors_and_redirect_loops(server):
    assert "HTTP 404" in await refused(f"{server}/missing", allow_hosts=LOCAL)
    assert "redirected more than 5 times" in await refused(f"{server}/loop", allow_hosts=LOCAL)


async def test_unknown_host_and_refused_connection():
    async def no_dns(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    assert "Could not find the server nowhere.example" in await refused("http://nowhere.example/", resolver=no_dns)
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert "Could not connect to 127.0.0.1" in await refused(f"http://127.0.0.1:{port}/", allow_hosts=LOCAL)
