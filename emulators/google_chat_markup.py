"""Message markup of the Google Chat emulator: parse, convert and render message text.

Role: turn what a client or a person typed into the three things Google Chat stores and shows:
the plain `text`, the `formattedText` (Chat markup, or Markdown on request) with its
`annotations`, and what a reader sees (a tiny canonical HTML for tests). Pure functions only; the
emulator state supplies user lookups as callables.

Model (reference §2.3 and §4; https://developers.google.com/workspace/chat/format-messages):
- A message body is parsed once into a `Doc`, a flat tuple of inline nodes. Everything the API
  returns is derived from that Doc, so what `text`, `formattedText` and the rendering say can
  never disagree.
- Chat syntax (`MARKUP_SYNTAX_CHAT`): `*bold*`, `_italic_`, `~strike~`, `` `mono` ``,
  ```` ```block``` ````, `<url|label>`, `<url>`, bare URLs (auto-linked), `<users/{id}>`.
  Bullets (`* item`) and quotes (`> text`) are line prefixes kept as literal text: how the UI
  strips them from `text` is UNCONFIRMED, so the emulator keeps them everywhere.
- Markdown (`MARKUP_SYNTAX_MARKDOWN`) is parsed with markdown-it-py's CommonMark preset plus
  strikethrough ("based on the CommonMark specification, with additional extensions"). The
  Chat-only link form `<url|label>` is therefore NOT a link in Markdown: with a space in it, it is
  literal text; without one, CommonMark reads it as an autolink whose target and label both
  contain the `|` (stricter reading: exactly what a CommonMark parser does). `<users/{id}>` stays
  a mention in Markdown too: Google documents no other mention syntax.
- Emphasis delimiters in Chat syntax only count at word boundaries (`2*3*4` stays literal), the
  rule chat clients use for `*`/`_`/`~` (the exact rule is UNCONFIRMED).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

MARKUP_SYNTAXES = ("MARKUP_SYNTAX_UNSPECIFIED", "MARKUP_SYNTAX_CHAT", "MARKUP_SYNTAX_MARKDOWN")
CHAT = "MARKUP_SYNTAX_CHAT"
MARKDOWN = "MARKUP_SYNTAX_MARKDOWN"


# --------------------------------------------------------------------------- the document model
@dataclass(frozen=True, slots=True)
class Text:
    value: str


@dataclass(frozen=True, slots=True)
class Styled:
    """Bold (`b`), italic (`i`) or strikethrough (`s`) around other inline nodes."""

    style: str
    children: tuple[Inline, ...]


@dataclass(frozen=True, slots=True)
class Code:
    value: str


@dataclass(frozen=True, slots=True)
class Pre:
    """A monospace block; `value` is everything between the fences (newlines included)."""

    value: str


@dataclass(frozen=True, slots=True)
class Link:
    """A hyperlink; `label` None means the URL is shown as itself. `bracketed`: written
    `<url>` rather than bare (a bare URL would swallow adjacent text when re-read)."""

    url: str
    label: str | None
    bracketed: bool = True


@dataclass(frozen=True, slots=True)
class Mention:
    user: str  # canonical `users/{id}`, or `users/all`


Inline = Text | Styled | Code | Pre | Link | Mention
Doc = tuple[Inline, ...]

# user name (or `users/{email}` alias) -> canonical name, or None when no such user.
UserResolver = Callable[[str], str | None]
# canonical user name -> display name ("" when unknown).
DisplayName = Callable[[str], str]

_CHAT_MARKERS = {"*": "b", "_": "i", "~": "s"}
_MENTION_RE = re.compile(r"<(users/[^<>\s|]+)>")
_CHAT_LINK_RE = re.compile(r"<((?:https?|mailto|ftp):[^<>\s|]+)(?:\|([^<>]*))?>", re.IGNORECASE)
_SHIELD_RE = re.compile("\ue000(\\d+)\ue001")
_BARE_URL_RE = re.compile(r"https?://[^\s<>]+[^\s<>.,;:!?)\]'\"*_~`]", re.IGNORECASE)


def _accept_any(name: str) -> str | None:
    return name


def _is_boundary(ch: str | None) -> bool:
    return ch is None or not ch.isalnum()


# --------------------------------------------------------------------------- Chat syntax
def parse_chat(text: str, resolve: UserResolver = _accept_any) -> Doc:
    """Parse Chat markup into a Doc. `<users/x>` for which `resolve` answers None stays text."""
    return tuple(_merge_text(_parse_chat(text, resolve, nested=False)))


def _parse_chat(text: str, resolve: UserResolver, *, nested: bool) -> Iterator[Inline]:
    i, n, buf = 0, len(text), []
    while i < n:
        ch = text[i]
        node: Inline | None = None
        end = i
        if text.startswith("```", i) and not nested:
            close = text.find("```", i + 3)
            if close > i + 3:
                node, end = Pre(text[i + 3 : close]), close + 3
        elif ch == "`":
            close = text.find("`", i + 1)
            if close > i + 1 and "\n" not in text[i + 1 : close]:
                node, end = Code(text[i + 1 : close]), close + 1
        elif ch == "<":
            if m := _MENTION_RE.match(text, i):
                user = resolve(m.group(1))
                if user is not None:
                    node, end = Mention(user), m.end()
            elif m := _CHAT_LINK_RE.match(text, i):
                label = m.group(2)
                node, end = Link(m.group(1), label if label else None), m.end()
        elif ch in "hH" and _is_boundary(text[i - 1] if i else None):
            if m := _BARE_URL_RE.match(text, i):
                node, end = Link(m.group(0), None, bracketed=False), m.end()
        elif ch in _CHAT_MARKERS:
            closer = _find_closer(text, i)
            if closer is not None:
                inner = tuple(_merge_text(_parse_chat(text[i + 1 : closer], resolve, nested=True)))
                node, end = Styled(_CHAT_MARKERS[ch], inner), closer + 1
        if node is None:
            buf.append(ch)
            i += 1
            continue
        if buf:
            yield Text("".join(buf))
            buf = []
        yield node
        i = end
    if buf:
        yield Text("".join(buf))


def _find_closer(text: str, i: int) -> int | None:
    """Index of the delimiter closing the one at `i`, on the same line, or None."""
    ch = text[i]
    before = text[i - 1] if i else None
    if not _is_boundary(before) or i + 1 >= len(text) or text[i + 1].isspace():
        return None
    if before == ch or text[i + 1] == ch:
        return None  # Chat markers are single characters: `**x**` and `__init__` stay literal
    j = i + 1
    while True:
        j = text.find(ch, j + 1)
        if j < 0 or "\n" in text[i:j]:
            return None
        after = text[j + 1] if j + 1 < len(text) else None
        if not text[j - 1].isspace() and text[j - 1] != ch and after != ch and _is_boundary(after):
            return j


def _merge_text(nodes: Iterator[Inline] | tuple[Inline, ...]) -> Iterator[Inline]:
    pending: list[str] = []
    for node in nodes:
        if isinstance(node, Text):
            pending.append(node.value)
            continue
        if pending:
            yield Text("".join(pending))
            pending = []
        yield node
    if pending:
        yield Text("".join(pending))


def to_chat(doc: Doc) -> str:
    """The Chat-markup form (`formattedText` with MARKUP_SYNTAX_CHAT)."""
    out = []
    for node in doc:
        if isinstance(node, Text):
            out.append(node.value)  # Chat markup has no escape character.
        elif isinstance(node, Styled):
            mark = {"b": "*", "i": "_", "s": "~"}[node.style]
            out.append(mark + to_chat(node.children) + mark)
        elif isinstance(node, Code):
            out.append(f"`{node.value}`")
        elif isinstance(node, Pre):
            out.append(f"```{node.value}```")
        elif isinstance(node, Link):
            if node.label is not None:
                out.append(f"<{node.url}|{node.label}>")
            else:
                out.append(f"<{node.url}>" if node.bracketed else node.url)
        else:
            out.append(f"<{node.user}>")
    return "".join(out)


# --------------------------------------------------------------------------- Markdown
_MD = MarkdownIt("commonmark").enable("strikethrough")


def parse_markdown(text: str, resolve: UserResolver = _accept_any) -> Doc:
    """Parse Markdown (CommonMark + strikethrough) into a Doc.

    Paragraphs are joined by a blank line, list items become `* ` / `1. ` lines, quotes `> `
    lines, headings bold lines (Chat has no headings), raw HTML literal text (Chat renders none).
    """
    blocks: list[list[Inline]] = []
    # Open line prefixes, outermost first: [marker, used]. A list item's marker goes on its
    # first line only; later lines of the item are indented by its width instead.
    prefixes: list[list[Any]] = []
    ordinals: list[int] = []
    heading = False
    # CommonMark would read `<users/a@b.c>` as an e-mail autolink; shield mentions from the
    # parser behind private-use placeholders and put them back afterwards.
    originals: list[str] = []

    def shield(m: re.Match[str]) -> str:
        originals.append(m.group(0))
        return f"\ue000{len(originals) - 1}\ue001"

    text = _MENTION_RE.sub(shield, text)

    def restore(value: str) -> str:
        return _restore(value, originals)

    for tok in _MD.parse(text):
        kind = tok.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            ordinals.append(0 if kind == "bullet_list_open" else int(tok.attrGet("start") or 1))
        elif kind in ("bullet_list_close", "ordered_list_close"):
            ordinals.pop()
        elif kind == "list_item_open":
            if ordinals[-1]:
                prefixes.append([f"{ordinals[-1]}. ", False])
                ordinals[-1] += 1
            else:
                prefixes.append(["* ", False])
        elif kind in ("list_item_close", "blockquote_close"):
            prefixes.pop()
        elif kind == "blockquote_open":
            prefixes.append(["> ", False])
        elif kind == "heading_open":
            heading = True
        elif kind == "inline":
            inlines = list(_md_inline(tok.children or [], resolve, originals))
            if heading:  # Chat has no headings: the stricter rendering is a bold line.
                inlines, heading = [Styled("b", tuple(_merge_text(tuple(inlines))))], False
            blocks.append(_prefixed(inlines, prefixes))
        elif kind in ("fence", "code_block"):
            blocks.append(_prefixed([Pre("\n" + restore(tok.content))], prefixes))
        elif kind == "html_block":
            blocks.append(_prefixed([Text(restore(tok.content).rstrip("\n"))], prefixes))
        elif kind == "hr":
            blocks.append(_prefixed([Text("---")], prefixes))
    # Consecutive list items are tight lines; other blocks are separated by a blank line.
    out: list[Inline] = []
    for k, block in enumerate(blocks):
        if k:
            both_items = _is_item(blocks[k - 1]) and _is_item(block)
            out.append(Text("\n" if both_items else "\n\n"))
        out.extend(block)
    return tuple(_merge_text(tuple(out)))


def _is_item(block: list[Inline]) -> bool:
    first = block[0] if block else None
    return isinstance(first, Text) and bool(re.match(r"^[ >]*(\* |\d+\. )", first.value))


def _prefixed(inlines: list[Inline], prefixes: list[list[Any]]) -> list[Inline]:
    if not prefixes:
        return inlines
    head = []
    for entry in prefixes:
        marker, used = entry
        head.append(marker if marker == "> " or not used else " " * len(marker))
        entry[1] = True
    # Continuation lines carry the quote markers and the list indentation.
    cont = "".join("> " if m == "> " else " " * len(m) for m, _used in prefixes)
    out: list[Inline] = [Text("".join(head))]
    for node in inlines:
        if isinstance(node, Text) and "\n" in node.value:
            out.append(Text(node.value.replace("\n", "\n" + cont)))
        else:
            out.append(node)
    return out


def _md_inline(
    tokens: list[Token], resolve: UserResolver, originals: list[str]
) -> Iterator[Inline]:
    def restore(value: str) -> str:
        return _restore(value, originals)

    stack: list[tuple[str, list[Inline]]] = [("", [])]
    link: tuple[str, list[str]] | None = None
    for tok in tokens:
        kind = tok.type
        if link is not None and kind != "link_close":
            link[1].append(restore(tok.content) if kind in ("text", "code_inline") else "")
            continue
        if kind == "text":
            stack[-1][1].extend(_split_mentions(tok.content, resolve, originals))
        elif kind in ("softbreak", "hardbreak"):
            stack[-1][1].append(Text("\n"))
        elif kind == "code_inline":
            stack[-1][1].append(Code(restore(tok.content)))
        elif kind == "html_inline":
            stack[-1][1].append(Text(restore(tok.content)))
        elif kind in ("strong_open", "em_open", "s_open"):
            stack.append(({"strong_open": "b", "em_open": "i", "s_open": "s"}[kind], []))
        elif kind in ("strong_close", "em_close", "s_close"):
            style, children = stack.pop()
            stack[-1][1].append(Styled(style, tuple(_merge_text(tuple(children)))))
        elif kind == "link_open":
            link = (restore(str(tok.attrGet("href") or "")), [])
        elif kind == "link_close" and link is not None:
            label = "".join(link[1])
            stack[-1][1].append(Link(link[0], None if label == link[0] else label))
            link = None
        elif kind == "image":
            src = str(tok.attrGet("src") or "")
            stack[-1][1].append(Link(restore(src), restore(tok.content) or None))
    # An unbalanced stack cannot happen with markdown-it's token stream; flatten defensively.
    while len(stack) > 1:
        _style, children = stack.pop()
        stack[-1][1].extend(children)
    return iter(stack[0][1])


def _restore(value: str, originals: list[str]) -> str:
    """Put shielded mentions back as their source text (a stray placeholder-like sequence in
    the input, with no such mention, is left as it was)."""

    def back(m: re.Match[str]) -> str:
        k = int(m.group(1))
        return originals[k] if k < len(originals) else m.group(0)

    return _SHIELD_RE.sub(back, value)


def _split_mentions(text: str, resolve: UserResolver, originals: list[str]) -> Iterator[Inline]:
    """Text with shielded mentions put back: a known user becomes a Mention, else literal."""
    pos = 0
    for m in _SHIELD_RE.finditer(text):
        if int(m.group(1)) >= len(originals):
            continue
        source = originals[int(m.group(1))]
        user = resolve(source[1:-1])
        if m.start() > pos:
            yield Text(text[pos : m.start()])
        yield Mention(user) if user is not None else Text(source)
        pos = m.end()
    if pos < len(text):
        yield Text(text[pos:])


_MD_ESCAPE_RE = re.compile(r"([\\`\[\]<&])")


def _md_escape(value: str, before: str, after: str) -> str:
    """Escape Markdown-special characters of literal text; `before`/`after` are the characters
    around it in the output ("x" when unknown, so edges are escaped conservatively)."""
    value = _MD_ESCAPE_RE.sub(r"\\\1", value)
    # `*`, `_`, `~` only need escaping where they could open or close emphasis, i.e. next to a
    # non-space character; `* item` bullets and `2 * 3` stay readable.
    out = []
    for k, ch in enumerate(value):
        if ch in "*_~":
            prev = value[k - 1] if k else before
            nxt = value[k + 1] if k + 1 < len(value) else after
            if not (prev.isspace() and nxt.isspace()):
                out.append("\\")
        out.append(ch)
    return "".join(out)


def to_markdown(doc: Doc) -> str:
    """The Markdown form (`formattedText` with MARKUP_SYNTAX_MARKDOWN)."""
    out: list[str] = []
    for k, node in enumerate(doc):
        if isinstance(node, Text):
            before = out[-1][-1] if out and out[-1] else "\n"
            after = "\n" if k + 1 == len(doc) else "x"
            out.append(_md_escape(node.value, before, after))
        elif isinstance(node, Styled):
            mark = {"b": "**", "i": "*", "s": "~~"}[node.style]
            out.append(mark + to_markdown(node.children) + mark)
        elif isinstance(node, Code):
            fence = "``" if "`" in node.value else "`"
            out.append(f"{fence}{node.value}{fence}")
        elif isinstance(node, Pre):
            # A fence must stand on its own lines, whatever surrounds the block in Chat.
            lead = "" if not out or out[-1].endswith("\n") else "\n"
            tail = "\n" if k + 1 < len(doc) else ""
            out.append(f"{lead}```\n{node.value.strip(chr(10))}\n```{tail}")
        elif isinstance(node, Link):
            if node.label is None:
                out.append(f"<{node.url}>")
            else:
                out.append(f"[{_md_escape(node.label, 'x', 'x')}]({node.url})")
        else:
            out.append(f"<{node.user}>")
    return "".join(out)


# --------------------------------------------------------------------------- derived forms
def plain_text(
    doc: Doc, display_name: DisplayName, omit: Callable[[str], bool] = lambda _u: False
) -> tuple[str, list[tuple[int, int, str]]]:
    """(`text`, mentions) for a Doc: markers stripped, links shown as their label, mentions as
    `@Display Name`. Each mention is (startIndex, length, user) in UTF-16 code units, the unit
    of protobuf JSON string offsets. Mentions of users `omit` accepts are left out entirely
    (`argumentText` is the text "with all Chat app mentions stripped out")."""
    parts: list[str] = []
    mentions: list[tuple[int, int, str]] = []
    offset = 0

    def emit(s: str) -> None:
        nonlocal offset
        parts.append(s)
        offset += _utf16_len(s)

    def walk(nodes: Doc) -> None:
        for node in nodes:
            if isinstance(node, Text):
                emit(node.value)
            elif isinstance(node, Styled):
                walk(node.children)
            elif isinstance(node, (Code, Pre)):
                emit(node.value)
            elif isinstance(node, Link):
                emit(node.url if node.label is None else node.label)
            elif not omit(node.user):
                shown = "@" + _mention_name(node.user, display_name)
                mentions.append((offset, _utf16_len(shown), node.user))
                emit(shown)

    walk(doc)
    return "".join(parts), mentions


def _mention_name(user: str, display_name: DisplayName) -> str:
    if user == "users/all":
        return "all"
    return display_name(user) or user.removeprefix("users/")


def _utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def render_html(doc: Doc, display_name: DisplayName = lambda _u: "") -> str:
    """What a person sees, as a tiny canonical HTML (for tests, not for browsers):
    `<b>`, `<i>`, `<s>`, `<code>`, `<pre>`, `<a href="url">label</a>`,
    `<mention user="users/1">@Name</mention>`; text is HTML-escaped, newlines kept."""
    out = []
    for node in doc:
        if isinstance(node, Text):
            out.append(html.escape(node.value, quote=False))
        elif isinstance(node, Styled):
            out.append(f"<{node.style}>{render_html(node.children, display_name)}</{node.style}>")
        elif isinstance(node, Code):
            out.append(f"<code>{html.escape(node.value, quote=False)}</code>")
        elif isinstance(node, Pre):
            value = node.value.removeprefix("\n").removesuffix("\n")
            out.append(f"<pre>{html.escape(value, quote=False)}</pre>")
        elif isinstance(node, Link):
            label = node.url if node.label is None else node.label
            out.append(f'<a href="{html.escape(node.url)}">{html.escape(label, quote=False)}</a>')
        else:
            name = html.escape("@" + _mention_name(node.user, display_name), quote=False)
            out.append(f'<mention user="{html.escape(node.user)}">{name}</mention>')
    return "".join(out)


def render_message(
    formatted_text: str,
    markup_syntax: str = CHAT,
    display_name: DisplayName = lambda _u: "",
) -> str:
    """Render a `formattedText` (Chat markup by default) the way a Chat reader would see it.

    Note: Chat markup has no escape character, so a literal `<https://x|y>` that came from
    Markdown input cannot be told apart from a link in the Chat form; the emulator's
    `/rendered` route therefore renders the stored Doc, not a re-parse of `formattedText`."""
    return render_html(parse(formatted_text, markup_syntax), display_name)


def parse(text: str, markup_syntax: str, resolve: UserResolver = _accept_any) -> Doc:
    """Parse `text` as the server does under `markup_syntax` (CHAT or MARKDOWN)."""
    if markup_syntax == MARKDOWN:
        return parse_markdown(text, resolve)
    if markup_syntax == CHAT:
        return parse_chat(text, resolve)
    raise ValueError(markup_syntax)


def serialize(doc: Doc, markup_syntax: str) -> str:
    return to_markdown(doc) if markup_syntax == MARKDOWN else to_chat(doc)
