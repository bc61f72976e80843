"""Business rules of the Discourse emulator: posting, editing, deleting, validations, webhooks.

Role: `Forum` combines the `ForumState` with the `WebhookDispatcher` and implements what
`PostCreator`, `PostRevisor`, `PostDestroyer` and the topic/category/user controllers do, for both
API callers and "humans acting in the web UI" (the control API).
Invariants:
- every public method takes the state lock for its whole duration, so an action and the webhook
  events it enqueues are atomic with respect to other requests;
- webhook payloads are serialized at enqueue time (as Discourse does), never at send time;
- `import_mode` posts enqueue no webhook; `skip_validations` skips validations and per-user limits
  but never the approval queue, the closed-topic guard, or the whisper guard (reference §3.3).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from emulators.discourse_model import (
    DELETED_BY_AUTHOR_POST,
    DELETED_BY_AUTHOR_TOPIC,
    MSG_DELETE_TOPIC_FAILED,
    MSG_EDIT_CONFLICT,
    MSG_EDIT_TOO_OLD,
    MSG_SUSPENDED_POST,
    MSG_TOPIC_GONE,
    MSG_WHISPER,
    POST_TYPE_REGULAR,
    POST_TYPE_WHISPER,
    ApiError,
    Category,
    ForumState,
    PendingPost,
    Post,
    Topic,
    User,
    base62,
    body_quality_ok,
    clean_title,
    count_attachments,
    count_emojis,
    count_links,
    count_media,
    invalid_access,
    invalid_parameters,
    iso,
    json_error,
    not_found,
    param_missing,
    rate_limited,
    slugify,
    stripped_length,
    title_quality_error,
    wait_to_int,
)
from emulators.discourse_serialize import (
    post_json,
    webhook_post_json,
    webhook_topic_json,
)
from emulators.discourse_webhooks import WebhookDispatcher

logger = logging.getLogger(__name__)

_EXTERNAL_ID = re.compile(r"[\w-]+", re.ASCII)


def truthy(value: Any) -> bool:
    """Discourse's `params[:x].to_s == "true"` (JSON true counts)."""
    return value is True or str(value).lower() == "true"


def ruby_to_i(value: Any) -> int:
    """Ruby's `String#to_i`: the leading integer, 0 when there is none (never raises)."""
    match = re.match(r"\s*([+-]?\d+)", str(value if value is not None else ""))
    return int(match.group(1)) if match else 0


def diff_size(before: str, after: str) -> int:
    """`PostRevisor#diff_size`: characters outside the common runs of a character diff.

    ONPDiff#short_diff is approximated with difflib's matching blocks (both are LCS-based).
    """
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    common = sum(block.size for block in matcher.get_matching_blocks())
    return (len(before) - common) + (len(after) - common)


def _chars(n: int) -> str:
    return "1 character" if n == 1 else f"{n} characters"


def parse_time(value: str) -> float:
    """`Time.zone.parse` for ISO 8601 strings; raises invalid_parameters on garbage."""
    text = str(value).strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise invalid_parameters("created_at") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class Forum:
    """The forum's behaviour. All methods lock `state.lock`; errors are raised as `ApiError`."""

    def __init__(self, state: ForumState, hooks: WebhookDispatcher) -> None:
        self.state = state
        self.hooks = hooks

    # --- webhooks ------------------------------------------------------------------------------

    def _emit_post(self, event: str, post: Post) -> None:
        topic = self.state.topics[post.topic_id]
        self.hooks.enqueue(
            "post", event, webhook_post_json(self.state, post), category_id=topic.category_id
        )

    def _emit_topic(self, event: str, topic: Topic) -> None:
        self.hooks.enqueue(
            "topic", event, webhook_topic_json(self.state, topic), category_id=topic.category_id
        )

    # --- validations ---------------------------------------------------------------------------

    def _title_errors(
        self, user: User, title: str | None, category_id: int | None, pm: bool, topic_id: int = 0
    ) -> list[str]:
        s = self.state.settings
        errors: list[str] = []
        if not title:
            errors.append("Title can't be blank")
        else:
            minimum = (
                s["min_personal_message_title_length"]
                if pm
                else 1
                if user.admin
                else s["min_topic_title_length"]
            )
            if len(title) < minimum:
                errors.append(f"Title is too short (minimum is {_chars(minimum)})")
            if len(title) > s["max_topic_title_length"]:
                errors.append(
                    f"Title is too long (maximum is {_chars(s['max_topic_title_length'])})"
                )
            if not pm:
                quality = title_quality_error(title, s)
                if quality:
                    errors.append(quality)
            if count_emojis(title) > s["max_emojis_in_title"]:
                errors.append(f"Title can't have more than {s['max_emojis_in_title']} emoji")
            if not pm and not s["allow_duplicate_topic_titles"]:
                for other in self.state.topics.values():
                    if (
                        other.id != topic_id
                        and other.deleted_at is None
                        and other.archetype == "regular"
                        and other.title.lower() == title.lower()
                        and (
                            not s["allow_duplicate_topic_titles_category"]
                            or other.category_id == category_id
                        )
                    ):
                        errors.append("Title has already been used")
                        break
        if not pm and not s["allow_uncategorized_topics"] and category_id in (None, 1):
            errors.append("Category can't be blank")
        return errors

    def _body_errors(
        self, user: User, raw: str, topic: Topic | None, pm: bool, first: bool
    ) -> list[str]:
        s = self.state.settings
        if user.staged:
            return []
        errors: list[str] = []
        minimum = (
            s["min_personal_message_post_length"]
            if pm
            else s["min_first_post_length"]
            if first
            else s["min_post_length"]
        )
        length = stripped_length(raw)
        if length < minimum:
            errors.append(f"Body is too short (minimum is {_chars(minimum)})")
        elif length > s["max_post_length"]:
            errors.append(
                f"Body is limited to {s['max_post_length']} characters; you entered {length}."
            )
        if not body_quality_ok(raw, s, pm):
            errors.append("Body seems unclear, is it a complete sentence?")
        if user.trust_level == 0 and not user.staff:
            if count_links(raw) > s["newuser_max_links"]:
                errors.append(
                    f"Sorry, new users can only put {s['newuser_max_links']} links in a post."
                )
            if count_attachments(raw) > s["newuser_max_attachments"]:
                errors.append("Sorry, new users can't put attachments in posts.")
            if count_media(raw) > s["newuser_max_embedded_media"]:
                errors.append("Sorry, new users can only put one embedded media item in a post.")
            if topic is not None and not pm:
                mine = [p for p in self.state.topic_posts(topic.id) if p.user_id == user.id]
                if len(mine) >= s["newuser_max_replies_per_topic"] and topic.user_id != user.id:
                    errors.append(
                        "We're sorry, but new users are temporarily limited to "
                        f"{s['newuser_max_replies_per_topic']} replies in the same topic."
                    )
        if not user.staff and s["unique_posts_mins"] > 0:
            seen = self.state.unique_posts.get(self._unique_key(user, raw, pm))
            if seen is not None and self.state.now() - seen < self.state.scaled(
                s["unique_posts_mins"] * 60
            ):
                errors.append("Body is too similar to what you recently posted")
        if topic is not None and not pm and not user.staff and topic.user_id != user.id:
            limit = s["max_consecutive_replies"]
            recent = self.state.topic_posts(topic.id)[-limit:] if limit > 0 else []
            if limit > 0 and len(recent) == limit and all(p.user_id == user.id for p in recent):
                errors.append(
                    f"No more than {limit} consecutive replies are allowed. Please edit your "
                    "previous reply, or wait for someone to reply to you."
                )
        return errors

    @staticmethod
    def _unique_key(user: User, raw: str, pm: bool) -> str:
        digest = hashlib.sha1(raw.encode()).hexdigest()
        return f"unique{'-pm' if pm else ''}-post-{user.id}:{digest}"

    def _external_id_errors(self, external_id: str) -> list[str]:
        errors = []
        if len(external_id) > 50:
            errors.append("External is too long (maximum is 50 characters)")
        if not _EXTERNAL_ID.fullmatch(external_id):
            errors.append("External is invalid")
        lower = external_id.lower()
        if any((t.external_id or "").lower() == lower for t in self.state.topics.values()):
            errors.append("External has already been taken")
        return errors

    # --- per-user limits -----------------------------------------------------------------------

    def _limits_for_post(
        self, user: User, new_topic: bool, pm: bool
    ) -> list[tuple[str, int, float]]:
        s = self.state.settings
        new_user = self.state.is_new_user(user)
        limits: list[tuple[str, int, float]] = []
        if new_topic:
            if pm:
                limits.append(("pms-per-day", s["max_personal_messages_per_day"], 86400))
            else:
                secs = s[
                    "rate_limit_new_user_create_topic" if new_user else "rate_limit_create_topic"
                ]
                limits.append(("create_topic", 1, secs))
                limits.append(("topics-per-day", s["max_topics_per_day"], 86400))
        secs = s["rate_limit_new_user_create_post" if new_user else "rate_limit_create_post"]
        limits.append(("create_post", 1, secs))
        return limits

    def check_limits(self, user: User, limits: list[tuple[str, int, float]]) -> None:
        """Raise the JSON 429 of the first exhausted limiter, else record one hit on each."""
        if user.staff:
            return
        now = self.state.now()
        for name, max_count, secs in limits:
            wait = self.state.limiter.available_in(
                f"{name}:{user.id}", max_count, self.state.scaled(secs), now
            )
            if wait > 0:
                raise rate_limited(name, wait_to_int(wait))
        for name, max_count, secs in limits:
            self.state.limiter.perform(
                f"{name}:{user.id}", max_count, self.state.scaled(secs), now
            )

    # --- create --------------------------------------------------------------------------------

    def create_post(
        self,
        user: User,
        params: dict[str, Any],
        *,
        api: bool,
        human: bool = False,
        memo_extra: str = "",
    ) -> dict[str, Any]:
        """`POST /posts.json`. Returns the 200 body; raises ApiError (422 body included)."""
        raw = params.get("raw")
        if raw is None or (isinstance(raw, str) and raw.strip() == "" and not human):
            raise param_missing("raw")
        raw = str(raw)
        with self.state.lock:
            memo_key = None
            if api and not human:
                memo_key = hashlib.sha1(
                    (
                        json.dumps(params, sort_keys=True, default=str) + memo_extra + str(user.id)
                    ).encode()
                ).hexdigest()
                hit = self.state.memo.get(memo_key)
                if hit is not None and self.state.now() - hit[0] < self.state.scaled(120):
                    if hit[1] != 200:
                        raise ApiError(hit[1], hit[2])
                    return dict(hit[2])
            try:
                body = self._create_post_locked(user, params, raw, api=api, human=human)
            except ApiError as err:
                if memo_key is not None and err.status == 422:
                    self.state.memo[memo_key] = (self.state.now(), err.status, err.body)
                raise
            if memo_key is not None:
                self.state.memo[memo_key] = (self.state.now(), 200, body)
            return body

    def _create_post_locked(
        self, user: User, params: dict[str, Any], raw: str, *, api: bool, human: bool
    ) -> dict[str, Any]:
        s = self.state.settings
        skip = human or (api and truthy(params.get("skip_validations")))
        import_mode = api and truthy(params.get("import_mode"))
        post_type = int(params.get("post_type") or POST_TYPE_REGULAR) if human else 1
        if truthy(params.get("whisper")):
            if not (user.staff and s["enable_whispers"]):
                raise json_error(403, [MSG_WHISPER], "invalid_access")
            post_type = POST_TYPE_WHISPER
        category_id: int | None = None
        raw_category = params.get("category", params.get("category_id"))
        if raw_category not in (None, ""):
            if not re.fullmatch(r"\d+", str(raw_category)):
                raise invalid_parameters("category")
            category_id = int(raw_category)
            if category_id not in self.state.categories:
                raise invalid_parameters("category")
        topic: Topic | None = None
        archetype = str(params.get("archetype") or "regular")
        targets = params.get("target_recipients") or params.get("target_usernames") or []
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if params.get("topic_id") not in (None, ""):
            if archetype == "private_message" and targets:
                raise self._422(["Sorry, you can't create a PM on an existing topic."])
            try:
                topic = self.state.topics.get(int(params["topic_id"]))
            except (TypeError, ValueError) as exc:
                raise invalid_parameters("topic_id") from exc
            if topic is None or topic.deleted_at is not None:
                raise self._422([MSG_TOPIC_GONE])
            if (topic.closed or topic.archived) and not user.staff and not human:
                raise self._422([MSG_TOPIC_GONE])
            if topic.archetype == "private_message" and not (
                user.staff or user.id in topic.allowed_user_ids
            ):
                raise self._422([MSG_TOPIC_GONE])
        pm = (topic.archetype if topic else archetype) == "private_message"
        recipients: list[User] = []
        if topic is None and pm:
            for name in targets:
                target = self.state.user_by_username(str(name))
                if target is None:
                    # Wording UNCONFIRMED (not in the reference).
                    raise self._422([f"Sorry, there is no user named '{name}'."])
                recipients.append(target)
        if self.state.is_suspended(user) and not skip:
            raise self._422([MSG_SUSPENDED_POST])
        if not human:
            self._guardian_create(user, topic, category_id, pm, api_skip=skip)
        title = None
        if topic is None:
            title = clean_title(str(params.get("title") or ""), s)
        reply_to = params.get("reply_to_post_number")
        reply_to_number = int(reply_to) if reply_to not in (None, "") else None
        external_id = params.get("external_id") if api and topic is None else None
        errors: list[str] = []
        if external_id is not None:
            external_id = str(external_id)
            errors += self._external_id_errors(external_id)
        if not skip:
            if topic is None:
                errors += self._title_errors(user, title, category_id, pm)
            errors += self._body_errors(user, raw, topic, pm, first=topic is None)
        if errors:
            raise self._422(list(dict.fromkeys(errors)))
        # Approval queue (NewPostManager): never for staff or PMs; skip_validations does not help.
        if not human and not user.staff and not pm and self._needs_approval(user):
            pending = PendingPost(
                self.state.next_id("pending_post"), user.id, raw, self.state.now(), dict(params)
            )
            self.state.pending_posts[pending.id] = pending
            return {
                "action": "enqueued",
                "pending_post": {
                    "id": pending.id,
                    "raw": raw,
                    "created_at": iso(pending.created_at),
                },
                "pending_count": 1,
                "success": True,
            }
        if not skip:
            self.check_limits(user, self._limits_for_post(user, topic is None, pm))
        now = self.state.now()
        created_at = parse_time(params["created_at"]) if api and params.get("created_at") else now
        new_topic = topic is None
        if topic is None:
            topic = Topic(
                id=self.state.next_id("topic"),
                title=title or "",
                slug=slugify(title or ""),
                user_id=user.id,
                category_id=None if pm else (category_id or (1 if skip else None)),
                archetype="private_message" if pm else "regular",
                created_at=created_at,
                bumped_at=created_at,
                last_posted_at=created_at,
                updated_at=created_at,
                external_id=external_id,
                allowed_user_ids=[user.id] + [r.id for r in recipients] if pm else [],
            )
            self.state.topics[topic.id] = topic
        topic.highest_post_number += 1
        post = Post(
            id=self.state.next_id("post"),
            topic_id=topic.id,
            user_id=user.id,
            post_number=topic.highest_post_number,
            raw=raw,
            post_type=post_type,
            reply_to_post_number=reply_to_number,
            created_at=created_at,
            updated_at=created_at,
            action_code=params.get("action_code") if human else None,
            import_mode=import_mode,
            last_editor_id=user.id,
            last_version_at=created_at,
            version_raw=raw,
        )
        self.state.posts[post.id] = post
        self._link_uploads(post)
        if post_type in (1, 4):
            topic.last_posted_at = max(topic.last_posted_at, created_at)
            topic.bumped_at = max(topic.bumped_at, created_at)
            topic.last_poster_id = user.id
        if not import_mode:
            self.state.unique_posts[self._unique_key(user, raw, pm)] = now
            if new_topic:
                self._emit_topic("topic_created", topic)
            self._emit_post("post_created", post)
        logger.debug("post %d created in topic %d by %s", post.id, topic.id, user.username)
        body = post_json(self.state, post, user, add_raw=True)
        if truthy(params.get("nested_post")):
            return {"action": "create_post", "post": body, "success": True}
        return body

    def _guardian_create(
        self, user: User, topic: Topic | None, category_id: int | None, pm: bool, *, api_skip: bool
    ) -> None:
        """The guardian checks of PostCreator#valid? / TopicCreator#setup_topic_params.

        - Reply: `guardian.can_create?(Post, topic)` runs whatever `skip_validations` says (only
          the internal `skip_guardian` option bypasses it) → 422 `topic_not_found`. It fails for a
          silenced user (`SpamRule::AutoSilence.prevent_posting?`, even staff) unless the topic is
          a PM they are in, and for a category the user may not post in.
        - New topic: `ensure_can_create!(Topic, category)` → 403 `invalid_access`, skipped for
          `skip_validations` and for PMs. Staff always pass (`can_create_topic?` is `is_staff? ||
          …`); others fail when silenced or when the category is closed to them.
        """
        if topic is not None:
            is_participant = topic.archetype == "private_message" and (
                user.id in topic.allowed_user_ids
            )
            blocked = (self.state.is_silenced(user) and not is_participant) or not (
                topic.archetype == "private_message"
                or self.state.can_see_category(topic.category_id, user)
            )
            if blocked:
                raise self._422([MSG_TOPIC_GONE])
            return
        if pm or api_skip or user.staff:
            return
        if self.state.is_silenced(user) or not self.state.can_see_category(category_id, user):
            raise invalid_access()

    def _needs_approval(self, user: User) -> bool:
        s = self.state.settings
        if (
            s["approve_post_count"]
            and self.state.user_post_count(user.id) < s["approve_post_count"]
        ):
            return True
        return bool(s["approve_unless_trust_level"]) and user.trust_level < int(
            s["approve_unless_trust_level"]
        )

    @staticmethod
    def _422(errors: list[str]) -> ApiError:
        return ApiError(422, {"action": "create_post", "errors": errors})

    def approve_pending(self, pending_id: int) -> dict[str, Any]:
        """Approve a queued post (a moderator's click): it is created and webhooks fire."""
        with self.state.lock:
            pending = self.state.pending_posts.pop(pending_id, None)
            if pending is None:
                raise not_found()
            user = self.state.users[pending.user_id]
            params = dict(pending.params)
            params["raw"] = pending.raw
            return self._create_post_locked(user, params, pending.raw, api=True, human=True)

    # --- reads ---------------------------------------------------------------------------------

    def visible_post(self, post_id: int, viewer: User | None) -> Post:
        with self.state.lock:
            post = self.state.posts.get(post_id)
            if post is None or not self.can_see_post(post, viewer):
                raise not_found()
            return post

    def _link_uploads(self, post: Post) -> None:
        """`Post#link_post_uploads`: under `secure_uploads`, an upload's first post becomes its
        access control post, and that post decides whether it is secure (UploadSecurity: a
        private message or a read-restricted category)."""
        if not self.state.settings["secure_uploads"]:
            return
        stems = set(re.findall(r"upload://([A-Za-z0-9]+)", post.raw))
        for upload in self.state.uploads.values():
            if base62(bytes.fromhex(upload.sha1)) not in stems:
                continue
            if upload.access_control_post_id is None:
                upload.access_control_post_id = post.id
            control = self.state.posts.get(upload.access_control_post_id)
            topic = self.state.topics.get(control.topic_id) if control else None
            if topic is not None:
                category = self.state.categories.get(topic.category_id or 0)
                upload.secure = topic.archetype == "private_message" or bool(
                    category is not None and category.allowed_user_ids is not None
                )

    def can_see_post(self, post: Post, viewer: User | None) -> bool:
        staff = bool(viewer and viewer.staff)
        topic = self.state.topics.get(post.topic_id)
        if topic is None:
            return False
        if (post.deleted_at is not None or topic.deleted_at is not None) and not staff:
            return False
        if post.post_type == POST_TYPE_WHISPER and not staff:
            return False
        return self.can_see_topic(topic, viewer)

    def can_see_topic(self, topic: Topic, viewer: User | None) -> bool:
        staff = bool(viewer and viewer.staff)
        if topic.deleted_at is not None and not staff:
            return False
        if topic.archetype == "private_message":
            return staff or bool(viewer and viewer.id in topic.allowed_user_ids)
        # Read-restricted categories: Guardian#can_see_topic? → can_see_category?.
        return self.state.can_see_category(topic.category_id, viewer)

    # --- edit ----------------------------------------------------------------------------------

    def edit_post(
        self,
        user: User,
        post_id: int,
        raw: str | None,
        title: str | None = None,
        category_id: int | None = None,
        *,
        edit_reason: str | None = None,
        original_text: str | None = None,
        api: bool = True,
        human: bool = False,
    ) -> dict[str, Any]:
        """`PUT /posts/{id}.json`; returns `{"post": …}`."""
        with self.state.lock:
            post = self.state.posts.get(post_id)
            if post is None or not self.can_see_post(post, user):
                raise not_found()
            topic = self.state.topics[post.topic_id]
            if not (user.staff or user.id == post.user_id):
                raise invalid_access()
            if original_text is not None and original_text != post.raw:
                raise ApiError(409, {"errors": [MSG_EDIT_CONFLICT]})
            s = self.state.settings
            if not user.staff and not human:
                minutes = (
                    s["tl2_post_edit_time_limit"]
                    if user.trust_level >= 2
                    else s["post_edit_time_limit"]
                )
                if self.state.now() - post.created_at > self.state.scaled(minutes * 60):
                    raise ApiError(422, {"errors": [MSG_EDIT_TOO_OLD]})
            errors: list[str] = []
            new_title = (
                clean_title(title, s) if title is not None and post.post_number == 1 else None
            )
            if raw is not None and raw != post.raw and not human:
                pm = topic.archetype == "private_message"
                errors += [
                    e
                    for e in self._body_errors(user, raw, topic, pm, post.post_number == 1)
                    if "too similar" not in e and "consecutive" not in e and "replies" not in e
                ]
            if new_title is not None and new_title != topic.title and not human:
                errors += [
                    e
                    for e in self._title_errors(
                        user,
                        new_title,
                        category_id or topic.category_id,
                        topic.archetype == "private_message",
                        topic.id,
                    )
                    if not e.startswith("Category")
                ]
            if errors:
                raise ApiError(422, {"errors": list(dict.fromkeys(errors))})
            raw_changed = raw is not None and raw != post.raw
            topic_changed = (new_title is not None and new_title != topic.title) or (
                category_id is not None
                and post.post_number == 1
                and category_id != topic.category_id
            )
            if (raw_changed or topic_changed) and not user.staff and not human:
                self.check_limits(user, [("edit-post", s["max_edits_per_day"], 86400)])
            now = self.state.now()
            if raw_changed and raw is not None:
                if self._new_version(user, post, raw, edit_reason, now):
                    post.version += 1
                    post.last_version_at = now
                    post.version_raw = raw
                    post.edit_reason = edit_reason
                post.raw = raw
                post.last_editor_id = user.id
                post.updated_at = now
                self._link_uploads(post)
            if topic_changed:
                if new_title is not None:
                    topic.title = new_title
                    topic.slug = slugify(new_title)
                if category_id is not None:
                    if category_id not in self.state.categories:
                        raise invalid_parameters("category_id")
                    topic.category_id = category_id
                topic.updated_at = now
            # Initializer 012: an OP edit that changed the topic sends only topic_edited.
            if topic_changed and topic.deleted_at is None:
                self._emit_topic("topic_edited", topic)
            elif raw_changed and topic.deleted_at is None:
                self._emit_post("post_edited", post)
            return {"post": post_json(self.state, post, user, add_raw=True)}

    def _new_version(
        self, editor: User, post: Post, new_raw: str, edit_reason: str | None, now: float
    ) -> bool:
        """PostRevisor#should_create_new_version?: else a "ninja edit" keeps the version.

        A new version when another user edits (`last_editor_id != editor.id`), when the edit is
        past `editing_grace_period` seconds after the last version, when the raw moved by more
        than `editing_grace_period_max_diff` characters (`…_high_trust` for staff and TL2+) from
        the raw of the last version, or when a new `edit_reason` is given.
        """
        s = self.state.settings
        if (post.last_editor_id or post.user_id) != editor.id:
            return True
        if edit_reason and edit_reason != post.edit_reason:
            return True
        if now - post.last_version_at > self.state.scaled(float(s["editing_grace_period"])):
            return True
        max_diff = int(
            s["editing_grace_period_max_diff_high_trust"]
            if editor.staff or editor.trust_level > 1
            else s["editing_grace_period_max_diff"]
        )
        original = post.version_raw if post.version_raw is not None else post.raw
        return (
            abs(len(original) - len(new_raw)) > max_diff or diff_size(original, new_raw) > max_diff
        )

    def update_topic(
        self, user: User, topic_id: int, title: str | None, category_id: Any
    ) -> dict[str, Any]:
        """`PUT /t/-/{id}.json`; returns `{"basic_topic": …}`."""
        with self.state.lock:
            topic = self.state.topics.get(topic_id)
            if topic is None or not self.can_see_topic(topic, user):
                raise not_found()
            if not (user.staff or user.id == topic.user_id):
                raise invalid_access()
            s = self.state.settings
            changed = False
            if category_id not in (None, ""):
                if not re.fullmatch(r"\d+", str(category_id)) or int(category_id) not in (
                    self.state.categories
                ):
                    raise invalid_parameters("category_id")
                if int(category_id) != topic.category_id:
                    topic.category_id = int(category_id)
                    changed = True
            if title is not None:
                cleaned = clean_title(title, s)
                if cleaned != topic.title:
                    errors = [
                        e
                        for e in self._title_errors(
                            user,
                            cleaned,
                            topic.category_id,
                            topic.archetype == "private_message",
                            topic.id,
                        )
                        if not e.startswith("Category")
                    ]
                    if errors:
                        raise ApiError(422, {"errors": errors})
                    topic.title = cleaned
                    topic.slug = slugify(cleaned)
                    changed = True
            if changed:
                topic.updated_at = self.state.now()
                self._emit_topic("topic_edited", topic)
            return {
                "basic_topic": {
                    "id": topic.id,
                    "title": topic.title,
                    "fancy_title": topic.title,
                    "slug": topic.slug,
                    "posts_count": len(self.state.topic_posts(topic.id)),
                }
            }

    # --- delete / recover ----------------------------------------------------------------------

    def delete_post(self, user: User, post_id: int, *, human: bool = False) -> None:
        """`DELETE /posts/{id}.json`: staff soft-delete, or author mark-for-deletion."""
        with self.state.lock:
            post = self.state.posts.get(post_id)
            if post is None or not self.can_see_post(post, user):
                raise not_found()
            topic = self.state.topics[post.topic_id]
            if not (user.staff or user.id == post.user_id):
                raise invalid_access()
            s = self.state.settings
            if not user.staff and not human:
                self.check_limits(
                    user,
                    [
                        ("delete_post", s["max_post_deletions_per_minute"], 60),
                        ("delete_post_per_day", s["max_post_deletions_per_day"], 86400),
                    ],
                )
            now = self.state.now()
            first = post.post_number == 1
            if user.staff or s["delete_removed_posts_after"] < 1:
                post_payload = webhook_post_json(self.state, post)
                topic_payload = webhook_topic_json(self.state, topic) if first else None
                post.deleted_at = now
                post.deleted_by_id = user.id
                if first:
                    topic.deleted_at = now
                    topic.deleted_by_id = user.id
                self.hooks.enqueue(
                    "post", "post_destroyed", post_payload, category_id=topic.category_id
                )
                if topic_payload is not None:
                    self.hooks.enqueue(
                        "topic", "topic_destroyed", topic_payload, category_id=topic.category_id
                    )
                return
            if post.user_deleted:
                return
            post.raw_before_user_delete = post.raw
            post.raw = DELETED_BY_AUTHOR_TOPIC if first else DELETED_BY_AUTHOR_POST
            post.user_deleted = True
            # PostDestroyer revises with force_new_version: always a new version.
            post.version += 1
            post.updated_at = now
            post.last_version_at = now
            post.version_raw = post.raw
            post.last_editor_id = user.id
            if first:
                topic.closed = True
            self._emit_post("post_edited", post)
            self._emit_post("post_destroyed", post)
            if first:
                self._emit_topic("topic_destroyed", topic)

    def recover_post(self, user: User, post_id: int) -> dict[str, Any]:
        """`PUT /posts/{id}/recover.json`."""
        with self.state.lock:
            post = self.state.posts.get(post_id)
            if post is None:
                raise not_found()
            topic = self.state.topics[post.topic_id]
            if not (user.staff or (user.id == post.user_id and post.user_deleted)):
                raise invalid_access()
            first = post.post_number == 1
            if post.user_deleted:
                post.raw = post.raw_before_user_delete or post.raw
                post.user_deleted = False
                post.version += 1
                post.updated_at = self.state.now()
                post.last_version_at = post.updated_at
                post.version_raw = post.raw
                post.last_editor_id = user.id
                if first:
                    topic.closed = False
                self._emit_post("post_edited", post)
            elif post.deleted_at is not None:
                post.deleted_at = None
                post.deleted_by_id = None
                if first:
                    topic.deleted_at = None
                    topic.deleted_by_id = None
            else:
                return post_json(self.state, post, user)
            self._emit_post("post_recovered", post)
            if first:
                self._emit_topic("topic_recovered", topic)
            return post_json(self.state, post, user)

    def delete_topic(self, user: User, topic_id: int) -> None:
        with self.state.lock:
            topic = self.state.topics.get(topic_id)
            if topic is None or not self.can_see_topic(topic, user):
                raise not_found()
            if not user.staff or topic.deleted_at is not None:
                raise ApiError(422, {"errors": [MSG_DELETE_TOPIC_FAILED]})
            first = self.state.first_post(topic.id)
            if first is not None:
                self.delete_post(user, first.id)
            else:
                topic.deleted_at = self.state.now()
                topic.deleted_by_id = user.id
                self._emit_topic("topic_destroyed", topic)

    def recover_topic(self, user: User, topic_id: int) -> None:
        with self.state.lock:
            topic = self.state.topics.get(topic_id)
            if topic is None:
                raise not_found()
            if not user.staff:
                raise invalid_access()
            first = self.state.first_post(topic.id)
            if first is not None and first.deleted_at is not None:
                self.recover_post(user, first.id)
            elif topic.deleted_at is not None:
                topic.deleted_at = None
                topic.deleted_by_id = None
                self._emit_topic("topic_recovered", topic)

    # --- categories ----------------------------------------------------------------------------

    def create_category(self, params: dict[str, Any]) -> Category:
        """`POST /categories.json` rules; raises 422 `{"errors": […]}`."""
        with self.state.lock:
            name = params.get("name")
            if not name:
                raise param_missing("name")
            name = str(name).strip()
            errors: list[str] = []
            parent_id = params.get("parent_category_id")
            parent: Category | None = None
            if parent_id not in (None, ""):
                parent = self.state.categories.get(int(parent_id))
                if parent is None:
                    raise invalid_parameters("parent_category_id")
                if parent.id == 1:
                    errors.append("Uncategorized can't have a parent category")
                elif parent.parent_category_id is not None:
                    errors.append("You can't nest a subcategory under another")
            if len(name) > 50:
                errors.append("Category Name is too long (maximum is 50 characters)")
            for other in self.state.categories.values():
                if other.name.lower() == name.lower() and other.parent_category_id == (
                    parent.id if parent else None
                ):
                    errors.append("Category Name has already been taken")
                    break
            slug = str(params.get("slug") or "")
            if slug:
                if not slug.isascii():
                    errors.append("Slug contains non-ascii characters")
            else:
                slug = slugify(name, fallback="")
            if slug and any(
                c.slug == slug and c.parent_category_id == (parent.id if parent else None)
                for c in self.state.categories.values()
            ):
                errors.append("Slug is already in use")
            if errors:
                raise ApiError(422, {"errors": errors})
            category = Category(
                id=self.state.next_id("category"),
                name=name,
                slug=slug,
                color=str(params.get("color") or "0088CC"),
                text_color=str(params.get("text_color") or "FFFFFF"),
                parent_category_id=parent.id if parent else None,
                description=params.get("description"),
                position=len(self.state.categories),
                created_at=self.state.now(),
            )
            if not category.slug:
                category.slug = f"{category.id}-category"
            self.state.categories[category.id] = category
            return category
