"""Web pages: fetch a link safely (no internal addresses, bounded time and size) and read its main content.

Server-side request forgery guard: only http(s); every hop's host is resolved and refused when any
address is loopback, private, link-local, multicast, reserved, unspecified, CGNAT, an IPv4 address
embedded in IPv6 (mapped, NAT64, 6to4) of those, or a cloud metadata address — unless the host is in
`allow_hosts`. Redirects are followed here, one checked hop at a time. Against DNS rebinding the
request goes to the very IP that was checked: the URL's host is replaced by that IP, the `Host`
header keeps the name, and for https the TLS SNI and certificate check use the name (httpcore's
`sni_hostname` extension). Environment proxies are ignored (`trust_env=False`), since a proxy would
do its own resolution.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import re
import socket
import zlib
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Collection, Iterable
from urllib.parse import unquote

import httpx

from bot.errors import IngestError
from knowledge.sniff import ACCEPTED
from knowledge.types import Block

log = logging.getLogger(__name__)

USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
ACCEPTED_TYPES = frozenset({
    "text/html", "application/xhtml+xml", "text/plain", "text/markdown", "text/x-markdown", "text/csv",
    "application/csv", "text/tab-separated-values", "application/pdf", "application/octet-stream",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
})
METADATA_HOSTS = frozenset({
    "metadata.google.internal", "metadata", "metadata.goog", "instance-data", "instance-data.ec2.internal",
})
METADATA_IPS = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "168.63.129.16",
))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = (301, 302, 303, 307, 308)

Resolver = Callable[[str, int], "Awaitable[Iterable[str]] | Iterable[str]"]


@dataclass(frozen=True)
class FetchedPage:
    """A fetched link: the final URL, the body, the Content-Type header and a file name guess."""

    url: str
    data: bytes = field(repr=False)
    content_type: str  # the full header value, e.g. "text/html; charset=utf-8" (a `mime` for load_bytes)
    filename: str = ""


async def fetch_url(
    url: str,
    *,
    allow_hosts: Collection[str] = (),
    timeout: float = 20,
    max_bytes: int = 10 * 1024 * 1024,
    max_redirects: int = 5,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FetchedPage:
    """Fetch a public http(s) page within a deadline and size cap; raise IngestError when refused."""
    allowed = {_norm_host(h) for h in allow_hosts}
    current = _parse(url)
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "text/html,application/xhtml+xml,application/pdf,*/*;q=0.8",
        "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8",
        "Accept-Encoding": "gzip, deflate",
        "Connection": "close",  # never reuse a connection pinned to one host for another
    }
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(
                transport=transport, follow_redirects=False, trust_env=False, headers=headers,
                timeout=httpx.Timeout(timeout),
            ) as client:
                for _hop in range(max_redirects + 1):
                    addresses = await _checked_addresses(current, allowed, resolver)
                    result = await _get(client, current, addresses, max_bytes)
                    if isinstance(result, FetchedPage):
                        return result
                    current = result
                raise IngestError(
                    f"The link redirected more than {max_redirects} times, so Knowbot stopped following it; "
                    f"please send the final address of the page or upload the document as a file."
                )
    except (TimeoutError, httpx.TimeoutException) as exc:
        seconds = f"{timeout:g} second{'' if timeout == 1 else 's'}"
        raise IngestError(
            f"The page did not finish loading within {seconds}; please try again later or upload "
            f"the document as a file ({ACCEPTED})."
        ) from exc
    except httpx.HTTPError as exc:
        log.info("fetching %s failed: %s", current.host, type(exc).__name__)
        raise IngestError(
            f"Could not load the page at {current.host} because the connection failed; please check "
            f"the link or upload the document as a file."
        ) from exc


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise IngestError(
            "That link is not a valid web address; please send a full http:// or https:// link."
        ) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _scheme_error()
    return parsed


def _scheme_error() -> IngestError:
    return IngestError(
        "Knowbot can only fetch http:// and https:// links; please send a web link or upload the file."
    )


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def is_blocked_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is internal: loopback, private, link-local, CGNAT, metadata and the like."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop any %scope
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_blocked_address(embedded)
        if ip.teredo is not None or ip.is_site_local:
            return True
    return (
        ip in METADATA_IPS or not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local
        or ip.is_multicast or ip.is_reserved or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
    )


def _refused(host: str) -> IngestError:
    return IngestError(
        f"Knowbot does not fetch {host} because it points to a private or internal network address; "
        f"please send a public http(s) link or upload the document as a file."
    )


async def _checked_addresses(url: httpx.URL, allowed: set[str], resolver: Resolver | None) -> list[str]:
    """Resolve the URL's host and return its addresses, refusing internal ones unless allowed."""
    if url.scheme not in ("http", "https"):
        raise _scheme_error()
    host = _norm_host(url.raw_host.decode("ascii"))
    permitted = host in allowed or _norm_host(url.host) in allowed
    internal_name = host in METADATA_HOSTS or host == "localhost" or host.endswith((".internal", ".localhost"))
    if internal_name and not permitted:
        raise _refused(url.host)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80), resolver)
    if not addresses:
        raise IngestError(f"Could not find the server {url.host}; please check the link.")
    if not permitted:
        for address in addresses:
            try:
                blocked = is_blocked_address(ipaddress.ip_address(address.split("%", 1)[0]))
            except ValueError:
                blocked = True
            if blocked:
                log.info("refused to fetch %s: resolves to an internal address", host)
                raise _refused(url.host)
    return addresses


async def _resolve(host: str, port: int, resolver: Resolver | None) -> list[str]:
    try:
        if resolver is not None:
            result = resolver(host, port)
            found = await result if inspect.isawaitable(result) else result
            return list(dict.fromkeys(str(a) for a in found))
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise IngestError(f"Could not find the server {host}; please check the link.") from exc
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


async def _get(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[str], max_bytes: int
) -> FetchedPage | httpx.URL:
    """One hop, sent to a checked address: the page, or the URL the server redirects to."""
    host_header = url.raw_host.decode("ascii")
    if ":" in host_header:
        host_header = f"[{host_header}]"
    if url.port is not None:
        host_header += f":{url.port}"
    extensions = {}
    if url.scheme == "https" and not _is_ip(url.raw_host.decode("ascii")):
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    last_error: httpx.ConnectError | None = None
    for address in addresses:
        pinned = url.copy_with(host=address)
        try:
            headers = {"Host": host_header}
            async with client.stream("GET", pinned, headers=headers, extensions=extensions) as resp:
                return await _read(resp, url, max_bytes)
        except httpx.ConnectError as exc:
            last_error = exc
    raise IngestError(
        f"Could not connect to {url.host}; please check the link or upload the document as a file."
    ) from last_error


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


async def _read(resp: httpx.Response, url: httpx.URL, max_bytes: int) -> FetchedPage | httpx.URL:
    if resp.status_code in _REDIRECTS and resp.headers.get("location"):
        try:
            return url.join(resp.headers["location"])
        except httpx.InvalidURL as exc:
            raise IngestError(
                "The link redirected to an invalid address; please send the page's final address."
            ) from exc
    if not 200 <= resp.status_code < 300:
        raise IngestError(
            f"The page at {url.host} answered with an error (HTTP {resp.status_code}); please check that the "
            f"link opens in a browser, or upload the document as a file."
        )
    content_type = resp.headers.get("content-type", "") or "application/octet-stream"
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in ACCEPTED_TYPES:
        raise IngestError(
            f"The link returns {media}, which Knowbot cannot read; links must lead to a web page or "
            f"to one of these: {ACCEPTED}."
        )
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_big(max_bytes)
    if resp.is_stream_consumed:  # a transport (e.g. httpx.MockTransport) that hands back a read body
        if len(resp.content) > max_bytes:
            raise _too_big(max_bytes)
        return FetchedPage(str(url), resp.content, content_type, _filename(resp, url))
    decoder = _Decoder(resp.headers.get("content-encoding", ""))
    body = bytearray()
    async for chunk in resp.aiter_raw():
        body += decoder.feed(chunk, max_bytes - len(body) + 1)
        if len(body) > max_bytes:
            raise _too_big(max_bytes)
    return FetchedPage(str(url), bytes(body), content_type, _filename(resp, url))


def _too_big(max_bytes: int) -> IngestError:
    limit = f"{max_bytes / (1024 * 1024):.1f}".removesuffix(".0")
    return IngestError(
        f"The page is larger than the {limit} MB limit for links, so Knowbot stopped downloading it; "
        f"please send a smaller document or upload the file."
    )


class _Decoder:
    """Bounded Content-Encoding decoding, so a compressed bomb stops at the size cap."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._obj = None
        elif encoding in ("gzip", "x-gzip"):
            self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._obj = zlib.decompressobj(zlib.MAX_WBITS | 32)
        else:
            raise IngestError(
                f"The page uses a compression Knowbot does not read ({encoding}); "
                f"please upload the document as a file."
            )

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decode one raw chunk, producing at most `limit` bytes."""
        if self._obj is None:
            return data
        try:
            return self._obj.decompress(data, max(limit, 1))
        except zlib.error as exc:
            raise IngestError(
                "The page's compressed data is damaged; please try again or upload the document as a file."
            ) from exc


def _filename(resp: httpx.Response, url: httpx.URL) -> str:
    disposition = resp.headers.get("content-disposition", "")
    match = re.search(r"filename\*\s*=\s*[\w-]+'[^']*'([^;]+)", disposition, re.I) or re.search(
        r"filename\s*=\s*\"?([^\";]+)\"?", disposition, re.I
    )
    name = unquote(match.group(1)) if match else unquote(url.path.rsplit("/", 1)[-1])
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name if "." in name.strip(".") else ""


# --- reading a page's main content -------------------------------------------------------------

_DROP = (
    "//script|//style|//noscript|//template|//svg|//nav|//aside|//form|//iframe|//button|//select"
    "|//header[not(ancestor::article or ancestor::main)]|//footer[not(ancestor::article or ancestor::main)]"
    '|//*[@role="navigation"]|//*[@role="banner"]|//*[@role="contentinfo"]|//*[@aria-hidden="true"]'
)
_BLOCK_TAGS = frozenset(
    "p div section article main li ul ol h1 h2 h3 h4 h5 h6 pre blockquote table tr td th dl dt dd "
    "figure figcaption hr address details summary center body header footer".split()
)
_LINE = "\u2028"  # marks a <br> or a list item boundary while whitespace is collapsed
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


def extract_html(text: str) -> tuple[str, list[Block], None]:
    """Title and main-content blocks of an HTML page (WeChat articles are read from #js_content)."""
    from lxml import html as lxml_html

    root = lxml_html.document_fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text, count=1))
    og_title = _first(root.xpath('//meta[@property="og:title"]/@content'))
    page_title = _first(root.xpath("//title//text()"))
    wechat = root.xpath('//*[@id="js_content"]')
    if wechat:
        for el in wechat[0].xpath(".//script|.//style|.//svg|.//noscript"):
            el.drop_tree()
        name = _first(root.xpath('//*[@id="activity-name"]//text()'))
        return og_title or name or page_title, _walk(wechat[0]), None
    blocks = _trafilatura_blocks(text)
    if not blocks:
        for el in root.xpath(_DROP):
            el.drop_tree()
        mains = root.xpath('//main|//*[@role="main"]') or sorted(
            root.xpath("//article"), key=lambda a: len(a.text_content()), reverse=True
        )
        body = root.find("body")
        blocks = _walk(mains[0] if mains else body if body is not None else root)
    first_heading = next((b.text for b in blocks if b.kind == "heading"), "")
    return og_title or page_title or first_heading, blocks, None


def _first(values: list) -> str:
    from knowledge.loaders import clean_text

    return next((clean_text(str(v)) for v in values if clean_text(str(v))), "")


def _trafilatura_blocks(text: str) -> list[Block]:
    """Main content through trafilatura's XML output, or [] when it finds none."""
    import trafilatura
    from lxml import etree

    from knowledge.loaders import Outline, clean_text, table_blocks

    xml = trafilatura.extract(
        text, output_format="xml", include_tables=True, include_comments=False, include_images=False,
        include_links=False, include_formatting=False, deduplicate=False, with_metadata=False,
        favor_precision=True,
    )
    if not xml:
        return []
    doc = etree.fromstring(xml.encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True))
    main = doc.find("main")
    outline, blocks = Outline(), []
    for lb in doc.iter("lb"):
        lb.tail = " " + (lb.tail or "")

    def text_of(node) -> str:
        return clean_text("".join(node.itertext()))

    for el in main if main is not None else []:
        if el.tag == "head":
            rend = el.get("rend", "")
            blocks.append(outline.enter(int(rend[1]) if re.fullmatch(r"h[1-6]", rend) else 2, text_of(el)))
        elif el.tag == "list":
            blocks.append(outline.block("\n".join(filter(None, map(text_of, el.findall("item")))), "list"))
        elif el.tag == "table":
            rows = [[text_of(cell) for cell in row.findall("cell")] for row in el.iter("row")]
            blocks += table_blocks(rows, outline.location, outline.path)
        elif el.tag == "code":
            blocks.append(outline.block("".join(el.itertext()).strip("\n"), "code"))
        else:
            blocks.append(outline.block(text_of(el)))
    return [b for b in blocks if b.text]


def _walk(node) -> list[Block]:
    """Blocks of an HTML subtree: headings, paragraphs, lists, tables and code, in order."""
    from knowledge.loaders import Outline, clean_text, table_blocks

    outline, blocks = Outline(), []
    for br in node.iter("br"):
        br.tail = _LINE + (br.tail or "")

    def emit(text: str, kind="paragraph") -> None:
        text = "\n".join(filter(None, (clean_text(line) for line in text.split(_LINE))))
        if text:
            blocks.append(outline.block(text, kind))

    def handle(el) -> None:
        tag = el.tag
        if tag in _HEADINGS:
            if heading := clean_text(el.text_content()):
                blocks.append(outline.enter(_HEADINGS[tag], heading))
        elif tag == "pre":
            if (code := el.text_content().strip("\n")).strip():
                blocks.append(outline.block(code, "code"))
        elif tag == "table":
            rows = [[clean_text(c.text_content()) for c in tr.xpath("./td|./th")] for tr in el.iter("tr")]
            blocks.extend(table_blocks(rows, outline.location, outline.path))
        elif tag in ("ul", "ol"):
            emit(_LINE.join(li.text_content() for li in el.xpath("./li")), "list")
        else:
            walk(el)

    def walk(el) -> None:
        buf = [el.text or ""]
        for child in el:
            tag = child.tag if isinstance(child.tag, str) else ""
            if tag in _BLOCK_TAGS or (tag and any(True for _ in child.iterdescendants(*_BLOCK_TAGS))):
                emit("".join(buf))
                buf = []
                handle(child)
            elif tag:
                buf.append(child.text_content())
            buf.append(child.tail or "")
        emit("".join(buf))

    handle(node)
    return blocks
