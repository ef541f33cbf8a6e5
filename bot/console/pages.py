"""The console's server-rendered pages: sign-in, too many attempts, a refused link, console off.

Plain HTML with the console's stylesheet; English or Chinese after the browser's
Accept-Language. The sign-in form posts `password` and `csrf` (double-submit: the same value is
in the `kb_csrf_login` cookie).
"""

from __future__ import annotations

import html

TEXTS = {
    "en": {
        "title": "Knowbot console",
        "sign_in": "Sign in",
        "password": "Password",
        "hint": "Or type /console in a chat with Knowbot to get a one-time sign-in link.",
        "no_password": "No console password is set: type /console in a chat with Knowbot "
                       "(as a Knowbot admin or a chat admin) to get a one-time sign-in link.",
        "wrong": "That password is not right.",
        "csrf": "The form had expired. Please try again.",
        "too_many": "Too many attempts, try again in {n} minutes.",
        "too_many_title": "Too many attempts",
        "link_title": "This link cannot be used",
        "link_used": "This sign-in link was already used. Type /console in the chat again to "
                     "get a new one.",
        "link_expired": "This sign-in link has expired. Type /console in the chat again to get "
                        "a new one.",
        "link_bad": "This sign-in link is not valid. Type /console in the chat to get one.",
        "insecure": "This connection is not encrypted: sign-in works over https only (or on "
                    "this machine's own address).",
        "off_title": "The console is off",
        "off": "Set KNOWBOT_CONSOLE_PASSWORD (or KNOWBOT_CONSOLE_PASSWORD_HASH, printed by "
               "`knowbot console hash-password`), or name Knowbot admins in KNOWBOT_ADMINS, "
               "then restart `knowbot serve`.",
        "back": "Go to the sign-in page",
        "signed_in": "Signed in",
        "continue": "Open the console",
    },
    "zh": {
        "title": "Knowbot 控制台",
        "sign_in": "登录",
        "password": "密码",
        "hint": "也可以在与 Knowbot 的聊天中发送 /console，获取一次性登录链接。",
        "no_password": "未设置控制台密码：请在与 Knowbot 的聊天中发送 /console（需为 Knowbot "
                       "管理员或群管理员），获取一次性登录链接。",
        "wrong": "密码不正确。",
        "csrf": "表单已过期，请重试。",
        "too_many": "尝试次数过多，请在 {n} 分钟后重试。",
        "too_many_title": "尝试次数过多",
        "link_title": "此链接无法使用",
        "link_used": "此登录链接已被使用。请在聊天中再次发送 /console 获取新链接。",
        "link_expired": "此登录链接已过期。请在聊天中再次发送 /console 获取新链接。",
        "link_bad": "此登录链接无效。请在聊天中发送 /console 获取链接。",
        "insecure": "此连接未加密：只能通过 https（或本机地址）登录。",
        "off_title": "控制台未开启",
        "off": "请设置 KNOWBOT_CONSOLE_PASSWORD（或由 `knowbot console hash-password` 生成的 "
               "KNOWBOT_CONSOLE_PASSWORD_HASH），或在 KNOWBOT_ADMINS 中指定 Knowbot 管理员，"
               "然后重启 `knowbot serve`。",
        "back": "前往登录页",
        "signed_in": "已登录",
        "continue": "打开控制台",
    },
}


def language(accept_language: str | None) -> str:
    """"zh" when the browser prefers Chinese over English, else "en"."""
    best, best_q = "en", -1.0
    for part in (accept_language or "").split(",")[:20]:
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        lang = tag.strip().lower()[:2]
        if lang in TEXTS and q > best_q:
            best, best_q = lang, q
    return best


def _page(lang: str, title: str, body: str, root: str) -> str:
    t = TEXTS[lang]
    return (
        f'<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · {html.escape(t['title'])}</title>"
        f'<link rel="icon" href="{root}/static/icon.svg">'
        f'<link rel="stylesheet" href="{root}/static/app.css"></head>'
        '<body class="page"><main class="page-card">'
        f"<h1>{html.escape(t['title'])}</h1>{body}</main></body></html>"
    )


def login_page(lang: str, root: str, csrf: str, *, error: str | None = None,
               has_password: bool = True, insecure: bool = False) -> str:
    """The sign-in form (or, with no password set, how to get a link)."""
    t = TEXTS[lang]
    parts = []
    if insecure:
        parts.append(f'<p class="notice warn" role="alert">{html.escape(t["insecure"])}</p>')
    if error:
        parts.append(f'<p class="notice error" role="alert" id="login-error">'
                     f"{html.escape(error)}</p>")
    if has_password:
        parts.append(
            f'<form method="post" action="{root}/login" class="login">'
            f'<input type="hidden" name="csrf" value="{html.escape(csrf, quote=True)}">'
            f'<label for="password">{html.escape(t["password"])}</label>'
            '<input id="password" name="password" type="password" autocomplete="current-password"'
            ' required autofocus>'
            f'<button type="submit">{html.escape(t["sign_in"])}</button></form>'
            f'<p class="hint">{html.escape(t["hint"])}</p>')
    else:
        parts.append(f'<p>{html.escape(t["no_password"])}</p>')
    return _page(lang, t["sign_in"], "".join(parts), root)


def message_page(lang: str, root: str, title_key: str, text: str, *,
                 back: bool = True) -> str:
    """A page that says one thing (and links to the sign-in page)."""
    t = TEXTS[lang]
    link = f'<p><a href="{root}/login">{html.escape(t["back"])}</a></p>' if back else ""
    return _page(lang, t[title_key],
                 f'<h2>{html.escape(t[title_key])}</h2><p class="notice" role="alert">'
                 f"{html.escape(text)}</p>{link}", root)


def continue_page(lang: str, root: str) -> str:
    """After a chat link: signed in, on to the console (a refresh from this page, same-site)."""
    t = TEXTS[lang]
    body = (f'<h2>{html.escape(t["signed_in"])}</h2>'
            f'<p><a id="continue" href="{root}/">{html.escape(t["continue"])}</a></p>')
    page = _page(lang, t["signed_in"], body, root)
    return page.replace("<head>", f'<head><meta http-equiv="refresh" content="0;url={root}/">', 1)
