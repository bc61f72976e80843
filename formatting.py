"""Pure text conversions between Google Chat and Discourse.

Role: everything that turns one platform's text into the other's lives here, together with the
text helpers the sync modules need (titles, attribution lines, length splitting). What marks a
write as the bridge's own (origin markers, ``external_id`` values, client-assigned message ids,
content hashes) lives in ``origin.py``.

Invariants:
- No I/O and no logging of content. Lookups (Chat user -> Discourse username and back) are passed
  in as callables; nothing here knows about HTTP, the database or the clock.
- The converters never raise on any ``str`` input: malformed markup degrades to literal text.
- Chat -> Discourse escapes everything Discourse would otherwise misread (markdown specials,
  BBCode, HTML, leading ``#``/``>``/list markers, ``@name`` of people who are not mapped), so a
  message always shows literally what the Chat user typed. Chat's rules are modelled by
  ``parse_chat`` (Google documents the markers, not the edge cases; our reading is: a marker
  opens after a non-word character and before a non-blank one, and closes after a non-blank
  character and before a non-word one). Where CommonMark would glue two runs together, an
  invisible separator is emitted (ZWSP, U+2060 after a non-pinging '@', or an empty comment).
- Discourse -> Chat parses ``raw`` with markdown-it-py (CommonMark + strikethrough + tables, plus a
  small block rule for Discourse's ``[quote]``/``[details]``/``[poll]`` BBCode) and renders Chat
  markup. Chat has no escape character, so literal text that Chat would read as markup is broken
  up with invisible characters (U+200B next to a marker, U+200B after ``<``); how real Chat
  treats those is not documented, see ``_escape_chat_literal``.
- Only what the bridge means becomes markup on the other side (issue 17). Discourse -> Chat:
  the mentions the lookup answered and the links of link syntax (to web or mail addresses) are
  emitted as placeholders; one final pass, ``neutralise_chat``, then breaks every other
  ``<users/…>`` and ``<scheme:…>`` (however entities, escapes or tags assembled it), and the
  placeholders are swapped in last. Titles (``chat_title``) and DM messages take the same pass.
  Chat -> Discourse: names and texts never become HTML, BBCode, quotes or ``@`` pings (an '@' is
  neutralised wherever Discourse's boundary rule would read a mention: after blanks and any
  punctuation); display names in attribution lines are escaped (``discourse_attribution``).
- Every part of a long message carries the attribution line (``split_under_header``).

Markup syntax. Both directions use Chat syntax (``MARKUP_SYNTAX_CHAT``), and the Chat client
declares it on every call (``google_chat_client.MARKUP_SYNTAX``): messages are read with
``formattedText`` in Chat syntax and written with ``markupSyntax: MARKUP_SYNTAX_CHAT``. Chat
syntax is the one whose mentions and labelled links Google documents; Markdown syntax's are
UNCONFIRMED (reference google-chat-api.md §4), and an undeclared syntax is the app's default,
Markdown for new apps. A Chat message's ``text`` is plain (``@Bob Builder``, a link's label):
bodies are converted from ``formattedText`` (``ChatMessage.markup``), titles taken from ``text``.

Documented cases (tables in tests/test_formatting.py; GCF = Google's "Format messages" page;
WJ = U+2060 WORD JOINER, which Discourse's mention matcher does not read through):

    Chat formattedText        Discourse markdown       why
    *bold*                    **bold**                 GCF bold
    _it_                      _it_                     GCF italic ('_', not '*': nesting never
                                                       builds a '***' run CommonMark may misread)
    ~s~                       ~~s~~                    GCF strike; GFM strikethrough
    `code`, ```block```       code span, fence         GCF monospace, kept verbatim
    <https://x|label>         [label](<https://x>)     GCF hyperlink
    <users/ID>, ID mapped     @username                GCF mention; pings the forum user
    <users/ID>, not mapped    @<WJ>Display Name        shown, never pings; the name comes from
                                                       the mention annotation (or `text`)
    <users/all>               @<WJ>all                 no forum-wide ping from a post
    @word, markdown specials  @<WJ>word, escaped       shown literally as typed

Discourse -> Chat is the reverse table (``**b**`` -> ``*b*``, ``[l](u)`` -> ``<u|l>``,
``@mapped`` -> ``<users/ID>``), plus headings, quotes, lists, BBCode and emoji codes.
"""

from __future__ import annotations

import dataclasses
import html
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode

# "The maximum message size, including the message contents, is 32,000 bytes." (reference
# google-chat-api.md §4). Discourse's `max_post_length` default is 32000 characters (§3.1).
CHAT_MAX_BYTES = 32000
DISCOURSE_MAX_POST_CHARS = 32000
# What a Chat message with no text (and nothing attached) says in Discourse, in a post or a DM.
NO_TEXT = "_(a message with no text)_"

# Invisible characters used to neutralise markup. ZWSP breaks Chat markers; WORD JOINER after '@'
# breaks Discourse's mention matcher `@(\w[\w.-]{0,58}\w)` (it runs on cooked text tokens after
# markdown escapes are resolved, so a backslash before '@' is not a reliable way to stop a ping).
ZWSP = "\u200b"
WORD_JOINER = "\u2060"
# Every invisible character the converters insert; `origin.content_hash` ignores them all.
INVISIBLE = (ZWSP, WORD_JOINER, "\ufeff")

# ---------------------------------------------------------------------------------------------
# Chat markup: a small parser shared by the Chat -> Discourse converter and the tests.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatText:
    text: str


@dataclass(frozen=True, slots=True)
class ChatStyle:
    """A `*bold*`, `_italic_` or `~strike~` span (marker is the Chat character)."""

    marker: str
    children: tuple[ChatInline, ...]


@dataclass(frozen=True, slots=True)
class ChatCode:
    code: str


@dataclass(frozen=True, slots=True)
class ChatLink:
    url: str
    label: str | None  # None: a bare URL or `<url>`


@dataclass(frozen=True, slots=True)
class ChatMention:
    user: str  # "users/123" or "users/all"


ChatInline = ChatText | ChatStyle | ChatCode | ChatLink | ChatMention


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One line of Chat text outside code blocks; kind is "text", "bullet" or "quote"."""

    kind: str
    inlines: tuple[ChatInline, ...]


@dataclass(frozen=True, slots=True)
class ChatCodeBlock:
    code: str


ChatBlock = ChatLine | ChatCodeBlock

_STYLE_MARKERS = "*_~"
_CODE_BLOCK_RE = re.compile(r"```(.*?)```", re.DOTALL)
_CHAT_MENTION_RE = re.compile(r"<(users/[A-Za-z0-9_.-]+)>")
_CHAT_LINK_RE = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]*:[^\s|<>]+)(?:\|([^<>\n]*))?>")
_BARE_URL_RE = re.compile(
    r"(?:https?|ftp)://[^\s<>\u200b\u2060\ufeff]+|mailto:[^\s<>\u200b\u2060\ufeff]+",
    re.IGNORECASE,
)
_BULLET_RE = re.compile(r"^[ \t]*[*-][ \t]+(?=\S)")
_QUOTE_RE = re.compile(r"^[ \t]*> ")
_URL_TRAILING = ".,;:!?'\")]}*_~"


def _is_word(c: str) -> bool:
    return c != "" and (c.isalnum() or c == "_")


def _is_blank(c: str) -> bool:
    # Invisible characters count as blanks so that a marker next to one is not markup: that is
    # how the Discourse -> Chat direction neutralises literal markers.
    return c.isspace() or c in INVISIBLE


def _visible_before(s: str, i: int, start: int) -> str:
    """The last visible character in s[start:i] ("" if none): invisible characters never glue
    a URL to the word before it."""
    k = i - 1
    while k >= start and s[k] in INVISIBLE:
        k -= 1
    return s[k] if k >= start else ""


def _trim_url(url: str) -> str:
    """Drop trailing punctuation a bare URL is unlikely to end with (keep balanced parens)."""
    while url and url[-1] in _URL_TRAILING:
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break
        url = url[:-1]
    return url


class _InlineParser:
    """Chat inline markup over one line, in O(n log n): valid closers are indexed up front.

    A style span opens at a marker that follows a non-word character (or the start of the
    enclosing span) and precedes a non-blank one; it closes at the first later marker that
    follows a non-blank character and precedes a non-word one (or the end of the span).
    """

    def __init__(self, s: str) -> None:
        self.s = s
        n = len(s)
        self.closers: dict[str, list[int]] = {m: [] for m in _STYLE_MARKERS}
        for j, ch in enumerate(s):
            if (
                ch in self.closers
                and j > 0
                and not _is_blank(s[j - 1])
                and (j + 1 == n or not _is_word(s[j + 1]))
            ):
                self.closers[ch].append(j)

    def find_closer(self, marker: str, lo: int, end: int) -> int:
        s = self.s
        found = -1
        positions = self.closers[marker]
        k = bisect_left(positions, lo)
        if k < len(positions) and positions[k] < end:
            found = positions[k]
        last = end - 1
        # At the end of the enclosing span the character after does not count.
        ends_span = last >= lo and s[last] == marker and not _is_blank(s[last - 1])
        if ends_span and (found < 0 or last < found):
            found = last
        return found

    def parse(self, start: int, end: int, active: frozenset[str]) -> tuple[ChatInline, ...]:
        s = self.s
        out: list[ChatInline] = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                out.append(ChatText("".join(buf)))
                buf.clear()

        i = start
        while i < end:
            c = s[i]
            prev = s[i - 1] if i > start else ""
            if c == "`":
                j = s.find("`", i + 1, end)
                if j > i + 1 and not _is_blank(s[i + 1]):
                    flush()
                    out.append(ChatCode(s[i + 1 : j]))
                    i = j + 1
                    continue
            elif c == "<":
                m = _CHAT_MENTION_RE.match(s, i, end)
                if m:
                    flush()
                    out.append(ChatMention(m.group(1)))
                    i = m.end()
                    continue
                m = _CHAT_LINK_RE.match(s, i, end)
                if m:
                    flush()
                    label = m.group(2)
                    out.append(ChatLink(m.group(1), label if label else None))
                    i = m.end()
                    continue
            elif c in "hHfFmM" and not _is_word(_visible_before(s, i, start)):
                m = _BARE_URL_RE.match(s, i, end)
                if m:
                    url = _trim_url(m.group(0))
                    if url.startswith("mailto:") or len(url) > url.index("://") + 3:
                        flush()
                        out.append(ChatLink(url, None))
                        i += len(url)
                        continue
            elif c in _STYLE_MARKERS and c not in active:
                opens = not _is_word(prev) and i + 1 < end and not _is_blank(s[i + 1])
                j = self.find_closer(c, i + 2, end) if opens else -1
                if j > 0:
                    flush()
                    out.append(ChatStyle(c, self.parse(i + 1, j, active | {c})))
                    i = j + 1
                    continue
            buf.append(c)
            i += 1
        flush()
        return tuple(out)


def parse_chat_inline(s: str) -> tuple[ChatInline, ...]:
    """Parse one line of Chat markup into inline nodes (documented Chat syntax only)."""
    return _InlineParser(s).parse(0, len(s), frozenset())


def parse_chat(text: str) -> tuple[ChatBlock, ...]:
    """Parse Chat text (``text`` or ``formattedText``) into lines and code blocks."""
    blocks: list[ChatBlock] = []
    pos = 0
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for m in _CODE_BLOCK_RE.finditer(text):
        if not m.group(1).strip():
            continue  # "``````" or a block of blanks is not a code block
        blocks.extend(_parse_chat_lines(text[pos : m.start()]))
        blocks.append(ChatCodeBlock(m.group(1).strip("\n")))
        pos = m.end()
    blocks.extend(_parse_chat_lines(text[pos:]))
    return tuple(blocks)


def _parse_chat_lines(chunk: str) -> list[ChatBlock]:
    if chunk == "":
        return []
    lines: list[ChatBlock] = []
    for line in chunk.split("\n"):
        m = _BULLET_RE.match(line)
        if m:
            lines.append(ChatLine("bullet", parse_chat_inline(line[m.end() :])))
            continue
        m = _QUOTE_RE.match(line)
        if m:
            lines.append(ChatLine("quote", parse_chat_inline(line[m.end() :])))
            continue
        lines.append(ChatLine("text", parse_chat_inline(line)))
    return lines


# ---------------------------------------------------------------------------------------------
# Chat -> Discourse
# ---------------------------------------------------------------------------------------------

# Characters CommonMark (and Discourse's BBCode/HTML/table extensions) could read as markup
# anywhere in a line. Every ASCII punctuation character may be backslash-escaped in CommonMark.
_MD_INLINE_SPECIALS = set("\\`*_~[]<>|")
_ENTITY_RE = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
# Discourse reads '@name' after any blank or punctuation ('.', '_', '@' included: its
# text-post-process `allowedBoundary`), so only a letter or digit before '@' (an email) is safe.
# An '@' that ends a piece of text is neutralised too: what follows it in the post (a URL, the
# closing '_' of an emphasis CommonMark may not close) could make it '@name'.
_AT_NAME_RE = re.compile(r"(?<![^\W_])@(?=\w|\Z)")
_ORDERED_RE = re.compile(r"^(\d{1,9})([.)])")
_MD_SAFE_URL_RE = re.compile(r"^(?:[A-Za-z0-9:/?#=&%.,;+!$'()@-]|[^\x00-\x7f])+$")


def _escape_md_text(s: str) -> str:
    # '@name' of someone we could not map must show literally and never ping a Discourse user.
    # Judged on the text as typed: '@_x' escaped is '@\_x', which still reads '@_x' once cooked.
    s = _AT_NAME_RE.sub("@" + WORD_JOINER, s)
    out = []
    for c in s:
        out.append("\\" + c if c in _MD_INLINE_SPECIALS else c)
    escaped = "".join(out)
    return _ENTITY_RE.sub("\\\\&", escaped)


def _md_url(url: str) -> str:
    """A URL for Discourse markdown: verbatim when safe, else a CommonMark autolink."""
    # '&' could start an entity reference together with the text that follows the URL.
    if _MD_SAFE_URL_RE.match(url) and "&" not in url:
        return url
    return "<" + url.replace(" ", "%20").replace("<", "%3C").replace(">", "%3E") + ">"


def _md_link_dest(url: str) -> str:
    return "<" + url.replace("<", "%3C").replace(">", "%3E").replace("\n", "") + ">"


def _md_code_span(code: str) -> str:
    longest = max((len(r) for r in re.findall(r"`+", code)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if code.startswith("`") or code.endswith("`") or code.strip(" ") == "" else ""
    return fence + pad + code + pad + fence


def _md_fence(code: str) -> str:
    longest = max((len(r) for r in re.findall(r"`{3,}", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{code}\n{fence}"


# Italic uses '_' so that nesting never builds '***' runs, which CommonMark's delimiter rules
# ("rule of 3") can pair differently from what Chat meant.
_MD_STYLE = {"*": "**", "_": "_", "~": "~~"}


def _render_md_inlines(
    nodes: Sequence[ChatInline],
    mention_lookup: Callable[[str], str | None],
    display_name_lookup: Callable[[str], str | None] | None,
    everyone_mention: str | None,
) -> str:
    parts: list[str] = []
    prev_mention = False
    for node in nodes:
        rendered = ""
        if isinstance(node, ChatText):
            rendered = _escape_md_text(node.text)
        elif isinstance(node, ChatStyle):
            inner = _render_md_inlines(
                node.children, mention_lookup, display_name_lookup, everyone_mention
            )
            mark = _MD_STYLE[node.marker]
            rendered = f"{mark}{inner}{mark}"
        elif isinstance(node, ChatCode):
            rendered = _md_code_span(node.code)
        elif isinstance(node, ChatLink):
            if not _CHAT_LINK_SCHEME_RE.match(node.url):
                # `<javascript:…|label>`: Chat syntax, but no link a forum should carry.
                shown = node.url if node.label is None else f"{node.label} ({node.url})"
                rendered = _escape_md_text(shown)
            elif node.label is None or node.label == node.url:
                rendered = _md_url(node.url)
            else:
                if parts and parts[-1].endswith("!") and not parts[-1].endswith("\\!"):
                    parts[-1] = parts[-1][:-1] + "\\!"  # "![label](url)" is an image
                label = _escape_md_text(node.label)
                rendered = f"[{label}]({_md_link_dest(node.url)})"
        elif isinstance(node, ChatMention):
            rendered = _md_mention(
                node.user, mention_lookup, display_name_lookup, everyone_mention
            )
        before = "".join(parts[-1:])[-1:]
        if before in ("`", "*", "~") and rendered[:1] in ("`", "*", "~"):
            if not _escaped_end(parts[-1]):
                # "`a``b`" is one code span and "**a****b**" one delimiter run in CommonMark.
                # An empty comment separates them and, being punctuation on both sides, keeps
                # both runs able to close and open (a ZWSP would count as a letter there).
                rendered = "<!-- -->" + rendered
        elif prev_mention and rendered and (_is_word(rendered[0]) or rendered[0] in ".-*~`"):
            # "@ada" + "0" would read as the username "ada0", and "@ada**b**" is no bold (a
            # delimiter run after a letter may not open before punctuation): comment again.
            rendered = "<!-- -->" + rendered
        elif isinstance(node, ChatMention) and before and (_is_word(before) or before == "@"):
            # Discourse sees '@name' only after a non-word character (and a ZWSP after a
            # closing '_' would stop it closing).
            rendered = "<!-- -->" + rendered
        prev_mention = isinstance(node, ChatMention)
        parts.append(rendered)
    return "".join(parts)


def _escaped_end(s: str) -> bool:
    """True when the last character of markdown `s` is backslash-escaped."""
    run = len(s[:-1]) - len(s[:-1].rstrip("\\"))
    return run % 2 == 1


def _md_mention(
    user: str,
    mention_lookup: Callable[[str], str | None],
    display_name_lookup: Callable[[str], str | None] | None,
    everyone_mention: str | None,
) -> str:
    if user == "users/all":
        # Chat's <users/all> notifies every member of the space. Discourse posts have no
        # equivalent: 'all' is a reserved username, and @here pings at most `max_here_mentioned`
        # topic participants and only for trusted users. So by default it stays visible text
        # that pings nobody; callers posting to Discourse chat (which has channel-wide @all)
        # can pass everyone_mention="@all".
        return everyone_mention if everyone_mention is not None else "@" + WORD_JOINER + "all"
    username = _safe_call(mention_lookup, user)
    if username and re.fullmatch(r"[\w.-]+", username):
        return "@" + username
    display = _safe_call(display_name_lookup, user) if display_name_lookup else None
    return "@" + WORD_JOINER + _escape_md_text((display or "unknown user").replace("@", ""))


def _safe_call(fn: Callable[[str], str | None] | None, arg: str) -> str | None:
    # Lookups are the caller's code; they are expected not to raise. Only their return type is
    # checked here so that a bad value cannot corrupt the output.
    if fn is None:
        return None
    value = fn(arg)
    return value if isinstance(value, str) and value else None


def _escape_md_line_start(line: str) -> str:
    """Escape what CommonMark would read as a block construct at the start of a line."""
    if not line:
        return line
    m = _ORDERED_RE.match(line)
    if m:
        return m.group(1) + "\\" + m.group(2) + line[m.end() :]
    if line[0] in "#>+-=":
        return "\\" + line
    return line


def gchat_to_discourse_markdown(
    text: str,
    *,
    mention_lookup: Callable[[str], str | None],
    display_name_lookup: Callable[[str], str | None] | None = None,
    everyone_mention: str | None = None,
) -> str:
    """Convert a Chat message's ``formattedText`` (Chat syntax) to Discourse markdown.

    Pass ``ChatMessage.markup``: ``formattedText``, or ``text`` when Google sent none. The plain
    ``text`` of a real message has lost its markup (``@Bob Builder`` instead of ``<users/…>``,
    a link's label without its URL), so it converts to a poorer, un-pinging post.

    ``mention_lookup("users/123")`` returns the mapped Discourse username (pinged as
    ``@username``) or None; then ``display_name_lookup`` (optional; for a message,
    ``ChatMessage.mention_display_name``, which reads the mention annotations) gives the name
    shown as literal, non-pinging ``@Name``.
    """
    out: list[str] = []
    prev_kind = ""
    for block in parse_chat(text):
        if isinstance(block, ChatCodeBlock):
            out.append(("\n" if out and out[-1] != "" else "") + _md_fence(block.code))
            out.append("")
            prev_kind = "code"
            continue
        body = _render_md_inlines(
            block.inlines, mention_lookup, display_name_lookup, everyone_mention
        ).strip()
        if block.kind == "bullet":
            if prev_kind == "quote" and out and out[-1] != "":
                out.append("")  # else the item would continue the quote (CommonMark laziness)
            # A bare "-" under a paragraph would make it a setext heading.
            out.append("- " + _escape_md_line_start(body) if body else "\\-")
        elif block.kind == "quote":
            if prev_kind == "bullet" and out and out[-1] != "":
                out.append("")
            out.append("> " + _escape_md_line_start(body))
        else:
            if prev_kind in ("bullet", "quote") and body:
                out.append("")  # end the list/quote, else the line is a lazy continuation
            out.append(_escape_md_line_start(body))
        prev_kind = block.kind if body or block.kind != "text" else "blank"
    return _collapse_blank_lines("\n".join(out)).strip("\n")


# ---------------------------------------------------------------------------------------------
# Discourse -> Chat
# ---------------------------------------------------------------------------------------------

# Common Discourse emoji names (Discourse uses the twemoji/emoji-one names) -> Unicode. Unknown
# names are kept as ":name:"; callers can extend or override with the `emoji` argument.
BUILTIN_EMOJI: Mapping[str, str] = {
    "smile": "😄",
    "smiley": "😃",
    "grinning": "😀",
    "grin": "😁",
    "laughing": "😆",
    "joy": "😂",
    "rofl": "🤣",
    "slight_smile": "🙂",
    "slightly_smiling_face": "🙂",
    "upside_down_face": "🙃",
    "wink": "😉",
    "blush": "😊",
    "heart_eyes": "😍",
    "kissing_heart": "😘",
    "thinking": "🤔",
    "thinking_face": "🤔",
    "neutral_face": "😐",
    "expressionless": "😑",
    "roll_eyes": "🙄",
    "smirk": "😏",
    "confused": "😕",
    "worried": "😟",
    "slight_frown": "🙁",
    "frowning": "😦",
    "cry": "😢",
    "sob": "😭",
    "angry": "😠",
    "rage": "😡",
    "scream": "😱",
    "flushed": "😳",
    "sweat_smile": "😅",
    "sunglasses": "😎",
    "nerd_face": "🤓",
    "sleeping": "😴",
    "mask": "😷",
    "partying_face": "🥳",
    "innocent": "😇",
    "stuck_out_tongue": "😛",
    "+1": "👍",
    "thumbsup": "👍",
    "-1": "👎",
    "thumbsdown": "👎",
    "ok_hand": "👌",
    "clap": "👏",
    "wave": "👋",
    "pray": "🙏",
    "raised_hands": "🙌",
    "muscle": "💪",
    "point_up": "☝️",
    "point_right": "👉",
    "v": "✌️",
    "eyes": "👀",
    "heart": "❤️",
    "broken_heart": "💔",
    "star": "⭐",
    "sparkles": "✨",
    "fire": "🔥",
    "tada": "🎉",
    "confetti_ball": "🎊",
    "rocket": "🚀",
    "100": "💯",
    "white_check_mark": "✅",
    "heavy_check_mark": "✔️",
    "check": "✔️",
    "x": "❌",
    "warning": "⚠️",
    "exclamation": "❗",
    "question": "❓",
    "bulb": "💡",
    "memo": "📝",
    "pencil": "📝",
    "calendar": "📆",
    "date": "📅",
    "email": "📧",
    "link": "🔗",
    "lock": "🔒",
    "key": "🔑",
    "bug": "🐛",
    "wrench": "🔧",
    "hammer": "🔨",
    "gear": "⚙️",
    "coffee": "☕",
    "beer": "🍺",
    "pizza": "🍕",
    "cake": "🍰",
    "gift": "🎁",
    "trophy": "🏆",
    "dart": "🎯",
    "zap": "⚡",
    "sunny": "☀️",
    "cloud": "☁️",
    "snowflake": "❄️",
    "rainbow": "🌈",
    "earth_africa": "🌍",
    "hourglass": "⌛",
    "stopwatch": "⏱️",
    "bell": "🔔",
    "speech_balloon": "💬",
    "see_no_evil": "🙈",
    "dog": "🐶",
    "cat": "🐱",
    "shrug": "🤷",
    "facepalm": "🤦",
    "man_shrugging": "🤷‍♂️",
    "woman_shrugging": "🤷‍♀️",
    "arrow_right": "➡️",
    "arrow_left": "⬅️",
    "arrow_up": "⬆️",
    "arrow_down": "⬇️",
    "heavy_plus_sign": "➕",
    "heavy_minus_sign": "➖",
    "no_entry": "⛔",
    "stop_sign": "🛑",
    "red_circle": "🔴",
    "green_circle": "🟢",
    "information_source": "ℹ️",
}

_EMOJI_RE = re.compile(r":([a-z0-9_+-]+):(?:t([1-6]):)?")
_SKIN_TONES = {"2": "\U0001f3fb", "3": "\U0001f3fc", "4": "\U0001f3fd", "5": "\U0001f3fe"}
_SKIN_TONES["6"] = "\U0001f3ff"
# Discourse's mention matcher (discourse-markdown-it `mentions`): `@(\w[\w.-]{0,58}\w)|@(\w)`.
_DISCOURSE_MENTION_RE = re.compile(r"(?<![\w@])@(\w[\w.-]{0,58}\w|\w)")


def discourse_mentions(text: str) -> frozenset[str]:
    """The usernames `discourse_to_gchat_text` may look up in `text` (its mention grammar).

    Lets a caller resolve mentions before a pure planner renders the text.
    """
    return frozenset(m.group(1) for m in _DISCOURSE_MENTION_RE.finditer(text))


_CHAT_OPENING_LT_RE = re.compile(r"<(users/|[A-Za-z][A-Za-z0-9+.-]*:)")
# The final pass (`neutralise_chat`): a '<' that Chat could read as the start of a mention
# (`<users/…>`) or a link (`<scheme:…|…>`), also with blanks or characters that show nothing in
# between (in case Chat skips them), case-insensitively; unless a ZWSP already follows it.
_SHOWS_NOTHING = (
    "\\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\ufe00-\ufe0f\ufeff"
)
_CHAT_MARKUP_OPEN_RE = re.compile(
    f"<(?!{ZWSP})(?=[{_SHOWS_NOTHING}]*(?:users/|[a-z][a-z0-9+.-]*:))", re.IGNORECASE
)
# Placeholders for the markup the converter means; these characters never come from the input.
_PLACEHOLDER_OPEN = "\ue000"
_PLACEHOLDER_CLOSE = "\ue001"
_PLACEHOLDER_RE = re.compile(f"{_PLACEHOLDER_OPEN}(\\d+){_PLACEHOLDER_CLOSE}")
_NO_PLACEHOLDERS = str.maketrans({_PLACEHOLDER_OPEN: "\ufffd", _PLACEHOLDER_CLOSE: "\ufffd"})
# Link targets the converter writes as Chat links; anything else stays visible text.
_CHAT_LINK_SCHEME_RE = re.compile(r"(?:https?|ftp)://|mailto:", re.IGNORECASE)


def neutralise_chat(text: str) -> str:
    """The final pass of every Discourse -> Chat text: no `<users/…>` and no `<scheme:…>` left.

    A ZWSP after each '<' that could open a Chat mention or link, wherever it came from: a
    converter that escapes one markdown token at a time cannot see `&lt;users/all&gt;`,
    `\\<users/all>` or `<b>&lt;</b>users/all>` form one, and Chat has no escape character. Code
    is not exempt: where Chat's code spans end is undocumented, and an invisible character in
    code costs less than a ping of a whole space. Real mentions and links are not in the text
    yet when this runs (`discourse_to_gchat_text` swaps them in last), so none is touched.
    """
    return _CHAT_MARKUP_OPEN_RE.sub("<" + ZWSP, text)


def _swap_in(text: str, emitted: Sequence[str]) -> str:
    return _PLACEHOLDER_RE.sub(lambda m: emitted[int(m.group(1))], text)


def chat_title(title: str) -> str:
    """A Discourse topic title as one bold Chat line that shows the title literally."""
    plain = " ".join("".join(c if c.isprintable() else " " for c in title).split())
    return neutralise_chat(_wrap("*", _escape_chat_literal(plain, after_opener=True)))


# A comment left open hides the rest of its HTML block in Discourse too.
_HTML_COMMENT_RE = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_HTML_TAG_RE = re.compile(r"<[^>]*>")
_UPLOAD_RE = re.compile(r"^upload://([A-Za-z0-9]+(?:\.[A-Za-z0-9]+)?)$")
_BBCODE_OPEN_RE = re.compile(r"\[(quote|details|poll)(?=[\]= ])([^\]\n]*)\]", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Ctx:
    base_url: str
    mention_lookup: Callable[[str], str | None]
    emoji: Mapping[str, str]
    # The mentions and links this conversion means to write, shared by every copy of the
    # context; the text holds placeholders for them until `_swap_in` (see `neutralise_chat`).
    emitted: list[str]
    active: frozenset[str] = frozenset()
    # True right after an opening marker we emitted: the next literal must not disable it.
    after_opener: bool = False

    def with_active(self, marker: str) -> _Ctx:
        return dataclasses.replace(self, active=self.active | {marker}, after_opener=True)

    def plain(self) -> _Ctx:
        if not self.after_opener:
            return self
        return dataclasses.replace(self, after_opener=False)

    def emit(self, markup: str) -> str:
        """A placeholder for Chat markup the converter means (a mention, a labelled link)."""
        self.emitted.append(markup)
        return f"{_PLACEHOLDER_OPEN}{len(self.emitted) - 1}{_PLACEHOLDER_CLOSE}"


_BBCODE_ANY_TAG_RE = re.compile(
    r"\[/(quote|details|poll)\]|\[(quote|details|poll)(?=[\]= ])[^\]\n]*\]", re.IGNORECASE
)


def _bbcode_pairs(src: str, env: MutableMapping[str, Any]) -> dict[int, tuple[int, int]]:
    """Open-tag position -> (close-tag start, close-tag end), matched like brackets per tag.

    Computed once per source text (cached in the markdown-it env) so that the block rule is
    linear even for thousands of unclosed tags.
    """
    cache: dict[str, dict[int, tuple[int, int]]] = env.setdefault("_bbcode_pairs", {})
    if src in cache:
        return cache[src]
    pairs: dict[int, tuple[int, int]] = {}
    stacks: dict[str, list[int]] = {"quote": [], "details": [], "poll": []}
    for m in _BBCODE_ANY_TAG_RE.finditer(src):
        closing = m.group(1) is not None
        tag = (m.group(1) or m.group(2)).lower()
        if closing:
            if stacks[tag]:
                pairs[stacks[tag].pop()] = (m.start(), m.end())
        else:
            stacks[tag].append(m.start())
    cache[src] = pairs
    return pairs


def _bbcode_block(state: StateBlock, start_line: int, end_line: int, silent: bool) -> bool:
    """Block rule for Discourse's BBCode containers `[quote]`, `[details]` and `[poll]`.

    The open tag starts a line and the close tag ends one (content may share those lines, as in
    `[details=Summary]text[/details]`). The inner text is parsed as markdown on its own.
    """
    if state.sCount[start_line] - state.blkIndent >= 4:
        return False
    pos = state.bMarks[start_line] + state.tShift[start_line]
    m = _BBCODE_OPEN_RE.match(state.src, pos, state.eMarks[start_line])
    if not m:
        return False
    pair = _bbcode_pairs(state.src, state.env).get(pos)
    if pair is None:
        return False
    close_start, close_end = pair
    line = start_line
    while line < end_line and state.eMarks[line] < close_start:
        line += 1
    if line >= end_line or state.src[close_end : state.eMarks[line]].strip():
        return False  # closed outside this container, or text after the close tag
    if silent:
        return True
    parts: list[str] = []
    for k in range(start_line, line + 1):
        begin = (
            m.end() if k == start_line else state.bMarks[k] + min(state.tShift[k], state.blkIndent)
        )
        finish = close_start if k == line else state.eMarks[k]
        parts.append(state.src[begin:finish])
    tag = m.group(1).lower()
    tok = state.push(f"bbcode_{tag}_open", "div", 1)
    tok.info = m.group(2).strip()
    tok.map = [start_line, line + 1]
    # Block-level tokens only: the outer parse's core `inline` rule fills in their children.
    state.md.block.parse("\n".join(parts), state.md, state.env, state.tokens)
    state.push(f"bbcode_{tag}_close", "div", -1)
    state.line = line + 1
    return True


def _make_md() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable(["strikethrough", "table"])
    # Keep backslash escapes as separate `text_special` tokens: an escaped `\[b]` is literal in
    # Discourse too, so inline BBCode must only be read from unescaped text.
    md.disable("text_join")
    md.block.ruler.before(
        "paragraph",
        "bbcode",
        _bbcode_block,
        {"alt": ["paragraph", "reference", "blockquote", "list"]},
    )
    return md


_MD = _make_md()


def _absolute_url(url: str, base_url: str) -> str:
    url = url.strip()
    m = _UPLOAD_RE.match(url)
    if m:
        return base_url.rstrip("/") + "/uploads/short-url/" + m.group(1)
    if url.startswith("//"):
        return "https:" + url
    if url.startswith("/"):
        return base_url.rstrip("/") + url
    return url


def _chat_url(url: str) -> str:
    # Characters that would end or split Chat's `<url|label>` syntax are percent-encoded.
    return re.sub(r"[|<>\s\"]", lambda m: f"%{ord(m.group(0)):02X}", url)


def _node_text(node: SyntaxTreeNode) -> str:
    """Plain text of an inline subtree (for link labels and alt texts)."""
    if node.type in ("text", "text_special", "code_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    if node.type == "image":
        return _image_label(node)
    return "".join(_node_text(c) for c in node.children)


def _image_label(node: SyntaxTreeNode) -> str:
    alt = "".join(_node_text(c) for c in node.children)
    # Discourse composer form: `![name|690x400](upload://…)`, `![name|video](…)`.
    return alt.split("|", 1)[0].strip()


def _escape_chat_literal(s: str, after_opener: bool = False) -> str:
    """Make literal text show literally in Chat, which has no escape character.

    Chat markup is only recognised when the marker sits next to non-blank text (`*bold*`), and
    `<` starts links and mentions. A ZWSP next to a marker, or after `<`, stops that while staying
    invisible. That real Chat honours the ZWSP is an assumption (Google documents no escape);
    what matters most is that a literal `<users/all>` typed in Discourse can never ping a space.
    URLs are left untouched so that Chat still auto-links them.
    """
    s = _CHAT_OPENING_LT_RE.sub(lambda m: "<" + ZWSP + m.group(1), s)
    out: list[str] = []
    pos = 0
    for m in _BARE_URL_RE.finditer(s):
        out.append(_escape_chat_plain(s[pos : m.start()], after_opener and pos == 0))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape_chat_plain(s[pos:], after_opener and pos == 0))
    return "".join(out)


def _escape_chat_plain(s: str, after_opener: bool = False) -> str:
    out: list[str] = []
    n = len(s)
    for k, c in enumerate(s):
        if c in _STYLE_MARKERS:
            # The previous character is taken from the output (it may be a ZWSP we added); an
            # unknown neighbour at a segment edge is treated as the risky case.
            prev = out[-1][-1] if out else ""
            nxt = s[k + 1] if k + 1 < n else ""
            can_close = (prev == "" or not _is_blank(prev)) and (nxt == "" or not _is_word(nxt))
            can_open = (prev == "" or not _is_word(prev)) and (nxt == "" or not _is_blank(nxt))
            # Blanks on both sides: a blank after stops an opener, one before stops a closer,
            # and one side alone could turn the marker into the other kind.
            # Right after our own opening marker a blank would disable that marker; a blank
            # after is enough here (this one cannot close a span that opens just before it).
            if k == 0 and after_opener and (can_close or can_open):
                out.append(c + ZWSP)
            else:
                out.append(ZWSP + c + ZWSP if can_close or can_open else c)
        elif c == "`":
            out.append(c + ZWSP)
        else:
            out.append(c)
    return "".join(out)


# Discourse's inline BBCode (bbcode-inline): [b] [i] [s] [u] and [url], within one text node.
_BBCODE_INLINE_RE = re.compile(
    r"\[(b|i|s|u)\](?=\S)(.+?)(?<=\S)\[/\1\]|\[url=([^\]\s]+)\](.+?)\[/url\]|\[url\]([^\[\s]+)\[/url\]",
    re.IGNORECASE,
)
_BBCODE_STYLE = {"b": "*", "i": "_", "s": "~", "u": ""}


def _convert_text(text: str, ctx: _Ctx) -> str:
    """A markdown text node: inline BBCode, emoji, mentions, and literal escaping."""
    out: list[str] = []
    pos = 0
    for m in _BBCODE_INLINE_RE.finditer(text):
        out.append(_convert_plain_text(text[pos : m.start()], ctx if pos == 0 else ctx.plain()))
        if m.group(1):
            marker = _BBCODE_STYLE[m.group(1).lower()]
            if not marker or marker in ctx.active:
                out.append(_convert_plain_text(m.group(2), ctx.plain()))
            else:
                inner = _convert_plain_text(m.group(2), ctx.with_active(marker))
                out.append(_wrap(marker, inner))
        elif m.group(3):
            url = _chat_url(_absolute_url(m.group(3), ctx.base_url))
            out.append(_chat_link(url, m.group(4), ctx))
        else:
            out.append(_absolute_url(m.group(5), ctx.base_url))
        pos = m.end()
    out.append(_convert_plain_text(text[pos:], ctx if pos == 0 else ctx.plain()))
    return "".join(out)


def _convert_plain_text(text: str, ctx: _Ctx) -> str:

    def emoji_sub(m: re.Match[str]) -> str:
        char = ctx.emoji.get(m.group(1))
        if char is None:
            return m.group(0)
        tone = _SKIN_TONES.get(m.group(2) or "", "")
        return char + tone

    # Our own mention neutraliser (see _escape_md_text) is dropped: '@name' in Chat never pings.
    text = text.replace("@" + WORD_JOINER, "@")
    text = _EMOJI_RE.sub(emoji_sub, text)
    out: list[str] = []
    pos = 0
    for m in _DISCOURSE_MENTION_RE.finditer(text):
        user = _safe_call(ctx.mention_lookup, m.group(1))
        if user and re.fullmatch(r"users/[A-Za-z0-9_.-]+", user) and user != "users/all":
            out.append(_escape_chat_literal(text[pos : m.start()], ctx.after_opener and pos == 0))
            out.append(ctx.emit(f"<{user}>"))
            pos = m.end()
    out.append(_escape_chat_literal(text[pos:], ctx.after_opener and pos == 0))
    return "".join(out)


def _wrap(marker: str, inner: str) -> str:
    """Wrap with a Chat marker, keeping edge whitespace outside (Chat needs it that way)."""
    stripped = inner.strip()
    if not stripped:
        return inner
    lead = inner[: len(inner) - len(inner.lstrip())]
    trail = inner[len(inner.rstrip()) :]
    return f"{lead}{marker}{stripped}{marker}{trail}"


_HTML_STYLE_TAGS = {
    "b": "*",
    "strong": "*",
    "i": "_",
    "em": "_",
    "s": "~",
    "del": "~",
    "strike": "~",
}
_CHAT_STYLE_OF = {"strong": "*", "em": "_", "s": "~"}


def _render_inline(nodes: Sequence[SyntaxTreeNode], ctx: _Ctx) -> str:
    out: list[str] = []
    i = 0
    first_ctx = ctx
    while i < len(nodes):
        ctx = first_ctx if i == 0 else first_ctx.plain()
        node = nodes[i]
        t = node.type
        if t == "text":
            out.append(_convert_text(node.content, ctx))
        elif t == "text_special":
            out.append(_escape_chat_literal(node.content, ctx.after_opener))
        elif t in _CHAT_STYLE_OF:
            marker = _CHAT_STYLE_OF[t]
            if marker in ctx.active:
                out.append(_render_inline(node.children, ctx))
            else:
                out.append(_wrap(marker, _render_inline(node.children, ctx.with_active(marker))))
        elif t == "code_inline":
            code = node.content.replace("`", "\u02cb")  # Chat code spans cannot hold a backtick
            out.append(f"`{code}`" if code.strip() else code)
        elif t in ("softbreak", "hardbreak"):
            out.append("\n")
        elif t == "link":
            out.append(_render_link(node, ctx))
        elif t == "image":
            src = _absolute_url(str(node.attrs.get("src", "")), ctx.base_url)
            label = _image_label(node) or "image"
            out.append(_chat_link(_chat_url(src), label, ctx))
        elif t == "html_inline":
            i = _render_html_inline(nodes, i, ctx, out)
        else:
            out.append(_render_inline(node.children, ctx))
        i += 1
    return "".join(out)


def _render_html_inline(nodes: Sequence[SyntaxTreeNode], i: int, ctx: _Ctx, out: list[str]) -> int:
    """Render an inline HTML tag; a known style tag consumes up to its closing tag."""
    content = nodes[i].content
    m = re.match(r"<\s*([A-Za-z]+)[^>]*>$", content)
    if m and m.group(1).lower() == "br":
        out.append("\n")
        return i
    if m and m.group(1).lower() in _HTML_STYLE_TAGS:
        tag = m.group(1).lower()
        close = re.compile(r"<\s*/\s*" + tag + r"\s*>$", re.IGNORECASE)
        for j in range(i + 1, len(nodes)):
            if nodes[j].type == "html_inline" and close.match(nodes[j].content):
                marker = _HTML_STYLE_TAGS[tag]
                inner_nodes = nodes[i + 1 : j]
                if marker in ctx.active:
                    out.append(_render_inline(inner_nodes, ctx))
                else:
                    inner = _render_inline(inner_nodes, ctx.with_active(marker))
                    out.append(_wrap(marker, inner))
                return j
    # Comments (our origin markers) and every other tag are dropped; their text stays.
    return i


def _chat_link(url: str, label: str, ctx: _Ctx) -> str:
    """A labelled Chat link (emitted, see `neutralise_chat`), or visible text for a label Chat
    cannot hold or a target that is not a web or mail address (`users/all`, `javascript:`)."""
    label = " ".join(label.split())
    if not label or label == url:
        return url
    if any(c in label for c in "|<>") or not _CHAT_LINK_SCHEME_RE.match(url):
        return f"{_escape_chat_literal(label)} ({url})"
    return ctx.emit(f"<{url}|{label}>")


def _render_link(node: SyntaxTreeNode, ctx: _Ctx) -> str:
    href = str(node.attrs.get("href", ""))
    label = _node_text(node)
    url = _chat_url(_absolute_url(href, ctx.base_url))
    if href.startswith("mailto:") and label == href[len("mailto:") :]:
        return label
    label = label.split("|", 1)[0].strip() if _UPLOAD_RE.match(href.strip()) else label
    # markdown-it percent-encodes hrefs, so an autolink's text differs from its href.
    if unquote(label.strip()) == unquote(href.strip()):
        # A bare URL: only whitespace would end it early in Chat.
        bare = _absolute_url(label.strip(), ctx.base_url)
        return re.sub(r"\s", lambda m: f"%{ord(m.group(0)):02X}", bare)
    return _chat_link(url, label, ctx)


def _prefix_lines(text: str, first: str, rest: str) -> str:
    lines = text.split("\n")
    return "\n".join((first if k == 0 else rest) + ln for k, ln in enumerate(lines))


def _render_blocks(nodes: Sequence[SyntaxTreeNode], ctx: _Ctx, sep: str = "\n\n") -> str:
    parts = [p for p in (_render_block(n, ctx) for n in nodes) if p.strip()]
    return sep.join(parts)


def _render_block(node: SyntaxTreeNode, ctx: _Ctx) -> str:
    t = node.type
    if t == "paragraph" or t == "inline":
        return _render_inline(_inline_children(node), ctx).strip("\n")
    if t == "heading":
        inner = _render_inline(_inline_children(node), ctx.with_active("*"))
        return _wrap("*", inner)
    if t == "blockquote":
        inner = _render_blocks(node.children, ctx)
        return _prefix_lines(inner, "> ", "> ")
    if t in ("bullet_list", "ordered_list"):
        return _render_list(node, ctx)
    if t in ("fence", "code_block"):
        # Chat ends the block at the first ``` so no two backticks may touch inside it.
        code = re.sub(r"`(?=`)", "`" + ZWSP, node.content.rstrip("\n"))
        return f"```\n{code}\n```" if code.strip() else ""
    if t == "hr":
        return "---"
    if t == "html_block":
        text = html.unescape(_HTML_TAG_RE.sub("", _HTML_COMMENT_RE.sub("", node.content)))
        return _escape_chat_literal(text.strip())
    if t == "table":
        return _render_table(node, ctx)
    if t == "bbcode_quote":
        return _render_bbcode_quote(node, ctx)
    if t == "bbcode_details":
        summary = _bbcode_param(_opening_info(node))
        body = _render_blocks(node.children, ctx)
        head = _wrap("*", "▸ " + _escape_chat_literal(summary or "Details"))
        return f"{head}\n{body}" if body else head
    if t == "bbcode_poll":
        body = _render_blocks(node.children, ctx, sep="\n")
        return f"*📊 Poll* (vote on Discourse)\n{body}" if body else "*📊 Poll*"
    return _render_blocks(node.children, ctx)


def _inline_children(node: SyntaxTreeNode) -> list[SyntaxTreeNode]:
    out: list[SyntaxTreeNode] = []
    for child in node.children:
        if child.type == "inline":
            out.extend(child.children)
        else:
            out.append(child)
    return out


def _bbcode_param(info: str) -> str:
    """The main parameter of `[tag=value]` or `[tag="value"]`."""
    m = re.match(r'^=\s*"([^"]*)"|^=\s*([^\s\]]*)', info)
    if not m:
        return ""
    return (m.group(1) if m.group(1) is not None else m.group(2) or "").strip()


def _render_bbcode_quote(node: SyntaxTreeNode, ctx: _Ctx) -> str:
    # [quote="alice, post:3, topic:7"] -> the first field is the quoted username.
    who = _bbcode_param(_opening_info(node)).split(",", 1)[0].strip()
    body = _render_blocks(node.children, ctx)
    quoted = _prefix_lines(body, "> ", "> ") if body else ""
    if who:
        head = _escape_chat_literal(who) + " wrote:"
        return f"{head}\n{quoted}" if quoted else head
    return quoted


def _render_list(node: SyntaxTreeNode, ctx: _Ctx) -> str:
    ordered = node.type == "ordered_list"
    start = int(node.attrs.get("start", 1) or 1) if ordered else 1
    items: list[str] = []
    for k, item in enumerate(node.children):
        body = _render_blocks(item.children, ctx, sep="\n")
        marker = f"{start + k}. " if ordered else "- "
        items.append(_prefix_lines(body, marker, "    ") if body else marker.rstrip())
    return "\n".join(items)


def _render_table(node: SyntaxTreeNode, ctx: _Ctx) -> str:
    lines: list[str] = []
    for section in node.children:
        for row in section.children:
            cells = []
            for cell in row.children:
                text = _render_inline(_inline_children(cell), ctx).replace("\n", " ").strip()
                cells.append(_wrap("*", text) if cell.type == "th" else text)
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def _opening_info(node: SyntaxTreeNode) -> str:
    """The `info` of a container's opening token (our BBCode rule stores the tag's parameter)."""
    tok = node.nester_tokens.opening if node.nester_tokens else node.token
    return tok.info if tok is not None else ""


def discourse_to_gchat_text(
    raw: str,
    *,
    base_url: str,
    mention_lookup: Callable[[str], str | None],
    emoji: Mapping[str, str] | None = None,
) -> str:
    """Render a Discourse post's ``raw`` markdown as Chat text (Chat markup syntax).

    ``mention_lookup(discourse_username)`` returns a Chat user name ("users/123") to mention, or
    None to leave a plain ``@name``. Origin markers and other HTML comments are removed.

    Only the mentions the lookup answered and the links of markdown/BBCode link syntax become
    Chat markup: they are emitted as placeholders, the text is neutralised (`neutralise_chat`),
    then they are swapped in.
    """
    table: dict[str, str] = dict(BUILTIN_EMOJI)
    if emoji:
        table.update(emoji)
    ctx = _Ctx(base_url=base_url, mention_lookup=mention_lookup, emoji=table, emitted=[])
    raw = raw.replace("\r\n", "\n").replace("\x00", "\ufffd").translate(_NO_PLACEHOLDERS)
    tokens: list[Token] = _MD.parse(raw)
    tree = SyntaxTreeNode(tokens)
    text = _collapse_blank_lines(_render_blocks(tree.children, ctx)).strip("\n")
    return _swap_in(neutralise_chat(text), ctx.emitted)


def _collapse_blank_lines(text: str) -> str:
    """Collapse runs of blank lines outside ``` blocks (whose content must stay verbatim)."""
    out: list[str] = []
    pos = 0
    for m in _CODE_BLOCK_RE.finditer(text):
        out.append(re.sub(r"\n{3,}", "\n\n", text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(re.sub(r"\n{3,}", "\n\n", text[pos:]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Length
# ---------------------------------------------------------------------------------------------


def _is_cluster_continuation(c: str) -> bool:
    """True when a cut just before `c` would split a grapheme cluster (approximation)."""
    cp = ord(c)
    return (
        unicodedata.combining(c) != 0
        or unicodedata.category(c) in ("Mn", "Me", "Mc")
        or cp == 0x200D  # zero-width joiner (emoji sequences)
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0x1F3FB <= cp <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tag characters (flag sequences)
    )


def _safe_cut(text: str, cut: int) -> int:
    """Move a cut left until it does not split a cluster (or a regional-indicator pair)."""
    k = cut
    while 0 < k < len(text) and (
        _is_cluster_continuation(text[k]) or (k > 0 and text[k - 1] == "\u200d")
    ):
        k -= 1
    if 0 < k < len(text) and _is_regional(text[k]) and _is_regional(text[k - 1]):
        run = 0
        j = k - 1
        while j >= 0 and _is_regional(text[j]):
            run += 1
            j -= 1
        if run % 2 == 1:
            k -= 1
    return k if k > 0 else cut


def _is_regional(c: str) -> bool:
    return 0x1F1E6 <= ord(c) <= 0x1F1FF


def split_for_limit(text: str, max_bytes: int) -> list[str]:
    """Split text into parts of at most ``max_bytes`` UTF-8 bytes.

    Cuts at a paragraph boundary if one fits, else a line break, else a space, else between
    code points (avoiding grapheme clusters where it can). Separators at a cut are dropped.
    Raises ValueError if ``max_bytes`` < 4 (one code point must always fit).
    """
    if max_bytes < 4:
        raise ValueError("max_bytes must be at least 4")
    parts: list[str] = []
    rest = text
    while len(rest.encode("utf-8")) > max_bytes:
        # Largest prefix (in code points) that fits in max_bytes.
        prefix = rest.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        limit = len(prefix)
        cut = -1
        for sep in ("\n\n", "\n", " "):
            k = rest.rfind(sep, 0, limit)
            if k > 0 and rest[:k].strip():
                cut = k
                break
        if cut > 0:
            head, rest = rest[:cut], rest[cut:].lstrip(" \n")
        else:
            k = _safe_cut(rest, limit)
            head, rest = rest[:k], rest[k:]
        head = head.rstrip(" \n")
        if head:
            parts.append(head)
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


def split_under_header(header: str, body: str, max_bytes: int) -> list[str]:
    """``header`` and ``body`` on lines of their own, in parts of at most ``max_bytes`` UTF-8
    bytes, every part beginning with ``header``.

    A reader of any part sees who wrote it, and a later part cannot begin with text that passes
    for someone else's header. The body's share is ``max_bytes`` less the header's line; a
    header longer than a quarter of ``max_bytes`` is cut to that (a header is one short line).
    Raises ValueError if ``max_bytes`` < 32 and there is a header.
    """
    if not header:
        return split_for_limit(body, max_bytes)
    if max_bytes < 32:
        raise ValueError("max_bytes must be at least 32 with a header")
    if len(header.encode("utf-8")) > max_bytes // 4:
        header = split_for_limit(header, max_bytes // 4 - 3)[0] + "…"
    if not body.strip():
        return [header]
    head = header + "\n"
    return [head + part for part in split_for_limit(body, max_bytes - len(head.encode("utf-8")))]


# ---------------------------------------------------------------------------------------------
# Titles
# ---------------------------------------------------------------------------------------------

_TITLE_MAX_WORD = 30  # Discourse `title_max_word_length` (reference discourse-api.md §3.1)
_TITLE_MIN_ENTROPY = 10  # `title_min_entropy`


def _plain_chat(
    nodes: Sequence[ChatInline], display_name_lookup: Callable[[str], str | None]
) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, ChatText):
            out.append(node.text)
        elif isinstance(node, ChatStyle):
            out.append(_plain_chat(node.children, display_name_lookup))
        elif isinstance(node, ChatCode):
            out.append(node.code)
        elif isinstance(node, ChatLink):
            out.append(node.label if node.label else _short_url(node.url))
        elif isinstance(node, ChatMention):
            if node.user == "users/all":
                out.append("@all")
            else:
                out.append("@" + (_safe_call(display_name_lookup, node.user) or "someone"))
    return "".join(out)


def _short_url(url: str) -> str:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    return host or url[:_TITLE_MAX_WORD]


def _is_emoji_like(c: str) -> bool:
    return unicodedata.category(c) in ("So", "Sk", "Cf", "Mn") or _is_cluster_continuation(c)


def _cut_words(title: str, max_length: int) -> str:
    if len(title) <= max_length:
        return title
    room = max_length - 1
    cut = title.rfind(" ", 0, room + 1)
    if cut < room // 2:
        cut = _safe_cut(title, room)
    return title[:cut].rstrip(" ,;:-") + "…"


def title_from_text(
    text: str,
    *,
    fallback: str,
    min_length: int = 15,
    max_length: int = 255,
    display_name_lookup: Callable[[str], str | None] | None = None,
) -> str:
    """A clean, non-empty Discourse topic title from a Chat message's first line.

    Discourse rejects short, all-caps, low-entropy and very-long-word titles (reference
    discourse-api.md §3.1); this avoids each of those. Uniqueness is the caller's concern.
    """
    first = ""
    for block in parse_chat(text):
        if isinstance(block, ChatLine):
            first = _plain_chat(block.inlines, display_name_lookup or (lambda _u: None))
        else:
            first = block.code.split("\n", 1)[0]
        if first.strip():
            break
    words = []
    for word in first.split():
        if len(word) > _TITLE_MAX_WORD:
            word = word[: _TITLE_MAX_WORD - 1] + "…"
        words.append(word)
    title = " ".join(words)
    title = "".join(c for c in title if c not in INVISIBLE and c.isprintable())
    letters = [c for c in title if c.isalpha()]
    if letters and not any(c.islower() for c in letters) and any(c.isupper() for c in letters):
        title = title.lower()
        title = title[:1].upper() + title[1:]
    emoji = [c for c in title if unicodedata.category(c) == "So"]
    if len(emoji) > 1:  # `max_emojis_in_title` is 1
        title = " ".join("".join(c for c in title if unicodedata.category(c) != "So").split())
    meaningful = [c for c in title if not _is_emoji_like(c) and not c.isspace()]
    fallback = " ".join(fallback.split())
    if not meaningful:
        title = fallback
    elif len(title) < min_length or len(set(title.lower())) < _TITLE_MIN_ENTROPY:
        title = f"{title} — {fallback}" if fallback else title
    title = _cut_words(title, max_length)
    return title if title.strip() else (fallback or "Chat thread")[:max_length]


# ---------------------------------------------------------------------------------------------
# Attribution
# ---------------------------------------------------------------------------------------------


def attribution_line(display_name: str | None, username: str, template: str | None = None) -> str:
    """Chat header naming a Discourse author, e.g. "*Ada Lovelace* (@ada) on Discourse:".

    `template` (the operator's `attribution_format`) replaces the default wording; it may use
    `{name}` (the display name, or the username when there is none) and `{username}`.
    """

    def clean(s: str) -> str:
        # Markup characters would break the bold span or form links/mentions.
        s = "".join(c for c in s if c not in "*_~`<>|" and c.isprintable())
        return " ".join(s.split())

    user = clean(username) or "unknown"
    name = clean(display_name or "")
    if template is not None:
        return template.format(name=name or user, username=user)
    if not name or name.lower() == user.lower():
        return f"*{user}* on Discourse:"
    return f"*{name}* (@{user}) on Discourse:"


def discourse_literal(text: str) -> str:
    """``text`` (a Chat display name) as one line of Discourse markdown that shows it literally:
    no markup, BBCode, HTML, entity or ``@`` mention (line breaks and controls become spaces)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return _escape_md_text(flat)


def discourse_attribution(display_name: str) -> str:
    """Discourse header naming a Chat author, e.g. "**Ada Lovelace** (Google Chat):"."""
    return f"**{discourse_literal(display_name) or 'someone'}** (Google Chat):"
