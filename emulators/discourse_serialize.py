"""JSON shapes of the Discourse emulator: the serializers of Discourse core, as plain functions.

Role: turn `discourse_model` entities into the JSON bodies Discourse sends (PostSerializer,
TopicViewSerializer, WebHookPostSerializer, WebHookTopicViewSerializer, CategorySerializer, chat
MessageSerializer/ChannelSerializer). Key sets follow `shared/reference/discourse-api.md` §2, §5,
§8.4-§8.6 and `shared/specs/openapi.json`. Callers hold the state lock.
"""

from __future__ import annotations

import html
from typing import Any

from emulators.discourse_model import (
    Category,
    ChatChannel,
    ChatMessage,
    ForumState,
    Post,
    Topic,
    Upload,
    User,
    base62,
    iso,
)

_AVATAR_COLOURS = ("e9a140", "a87137", "8c91ba", "b19c9b", "ce7bd9", "f0a5b3", "3ab54a")


def avatar_template(user: User) -> str:
    if user.id == -1:
        return "/images/discourse-logo-sketch-small.png"
    colour = _AVATAR_COLOURS[user.id % len(_AVATAR_COLOURS)]
    return f"/letter_avatar_proxy/v4/letter/{user.username[0].lower()}/{colour}/{{size}}.png"


def cook(raw: str) -> str:
    """A tiny stand-in for Discourse's markdown cooker: escaped paragraphs."""
    paragraphs = [p for p in raw.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return "\n".join(
        "<p>" + html.escape(p.strip()).replace("\n", "<br>\n") + "</p>" for p in paragraphs
    )


def basic_user(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "avatar_template": avatar_template(user),
    }


def _user(state: ForumState, user_id: int) -> User:
    user = state.users.get(user_id)
    if user is None:  # a deleted user: Discourse shows posts by the system user
        return state.users[-1]
    return user


def post_json(
    state: ForumState,
    post: Post,
    viewer: User | None,
    *,
    add_raw: bool = True,
    add_title: bool = False,
    for_stream: bool = False,
) -> dict[str, Any]:
    """PostSerializer (reference §2.1). `for_stream` drops keys absent from topic-view posts."""
    topic = state.topics[post.topic_id]
    author = _user(state, post.user_id)
    staff = bool(viewer and viewer.staff)
    yours = bool(viewer and viewer.id == post.user_id)
    reply_count = sum(
        1
        for p in state.posts.values()
        if p.topic_id == post.topic_id
        and p.reply_to_post_number == post.post_number
        and p.deleted_at is None
    )
    data: dict[str, Any] = {
        "id": post.id,
        "name": author.name,
        "username": author.username,
        "avatar_template": avatar_template(author),
        "created_at": iso(post.created_at),
        "cooked": cook(post.raw),
        "post_number": post.post_number,
        "post_type": post.post_type,
        "posts_count": len(state.topic_posts(topic.id)),
        "updated_at": iso(post.updated_at),
        "reply_count": reply_count,
        "reply_to_post_number": post.reply_to_post_number,
        "quote_count": 0,
        "incoming_link_count": 0,
        "reads": 1,
        "readers_count": 0,
        "score": 0,
        "yours": yours,
        "topic_id": topic.id,
        "topic_slug": topic.slug,
        "display_username": author.name,
        "primary_group_name": None,
        "flair_name": None,
        "flair_url": None,
        "flair_bg_color": None,
        "flair_color": None,
        "flair_group_id": None,
        "badges_granted": [],
        "version": post.version,
        "can_edit": staff or yours,
        "can_delete": staff or yours,
        "can_recover": staff and post.deleted_at is not None,
        "can_see_hidden_post": staff,
        "can_wiki": staff,
        "user_title": None,
        "bookmarked": False,
        "actions_summary": [],
        "moderator": author.moderator,
        "admin": author.admin,
        "staff": author.staff,
        "user_id": author.id,
        "draft_sequence": 0,
        "hidden": post.hidden,
        "trust_level": author.trust_level,
        "deleted_at": iso(post.deleted_at),
        "user_deleted": post.user_deleted,
        "edit_reason": post.edit_reason,
        "can_view_edit_history": True,
        "wiki": False,
        "reviewable_id": None,
        "reviewable_score_count": 0,
        "reviewable_score_pending_count": 0,
        "post_url": f"/t/{topic.slug}/{topic.id}/{post.post_number}",
        "post_localizations": [],
        "mentioned_users": [],
    }
    if add_raw and (not post.hidden or staff or yours):
        data["raw"] = post.raw
    if add_title:
        data["topic_title"] = topic.title
        data["topic_html_title"] = html.escape(topic.title)
        data["category_id"] = topic.category_id
        data["excerpt"] = html.escape(post.raw[:300])
        data["truncated"] = len(post.raw) > 300
        for key in ("draft_sequence", "post_localizations", "mentioned_users"):
            data.pop(key, None)
    if for_stream:
        for key in (
            "posts_count",
            "draft_sequence",
            "badges_granted",
            "post_localizations",
            "flair_group_id",
            "post_url",
        ):
            data.pop(key, None)
        data.pop("mentioned_users", None)
    if post.reply_to_post_number:
        parent = state.post_by_number(topic.id, post.reply_to_post_number)
        if parent is not None and not add_title and not for_stream:
            parent_user = _user(state, parent.user_id)
            data["reply_to_user"] = {
                "username": parent_user.username,
                "name": parent_user.name,
                "avatar_template": avatar_template(parent_user),
            }
    if post.action_code:
        data["action_code"] = post.action_code
    if staff and post.deleted_by_id is not None:
        data["deleted_by"] = basic_user(_user(state, post.deleted_by_id))
    return data


def webhook_post_json(state: ForumState, post: Post) -> dict[str, Any]:
    """WebHookPostSerializer (reference §8.4), serialized as the system user."""
    topic = state.topics[post.topic_id]
    author = _user(state, post.user_id)
    base = post_json(state, post, state.users[-1], add_raw=True)
    keys = (  # noqa: SIM905 - a key list reads best as the serializer's own text
        "id name username avatar_template created_at cooked post_number post_type updated_at "
        "reply_count reply_to_post_number quote_count incoming_link_count reads score topic_id "
        "topic_slug display_username primary_group_name flair_name flair_group_id version "
        "user_title bookmarked raw moderator admin staff user_id hidden trust_level deleted_at "
        "user_deleted edit_reason wiki reviewable_id reviewable_score_count "
        "reviewable_score_pending_count"
    ).split()
    data = {k: base.get(k) for k in keys}
    data["raw"] = post.raw
    data["topic_title"] = topic.title
    data["category_id"] = topic.category_id
    if "reply_to_user" in base:
        data["reply_to_user"] = base["reply_to_user"]
    if post.action_code:
        data["action_code"] = post.action_code
    if post.deleted_by_id is not None:
        data["deleted_by"] = basic_user(_user(state, post.deleted_by_id))
    if state.is_suspended(author):
        data["user_suspended"] = True
    live = [p for p in state.posts.values() if p.topic_id == topic.id and not p.user_deleted]
    data["topic_posts_count"] = len(live)
    data["topic_filtered_posts_count"] = len(live)
    data["topic_archetype"] = topic.archetype
    if topic.category_id is not None and topic.category_id in state.categories:
        data["category_slug"] = state.categories[topic.category_id].slug
    return data


def _topic_common(state: ForumState, topic: Topic) -> dict[str, Any]:
    posts = state.topic_posts(topic.id)
    regular = [p for p in posts if p.post_type in (1, 4)]
    data: dict[str, Any] = {
        "id": topic.id,
        "title": topic.title,
        "fancy_title": html.escape(topic.title),
        "posts_count": len(regular),
        "created_at": iso(topic.created_at),
        "views": 1,
        "reply_count": max(0, len(regular) - 1),
        "like_count": 0,
        "last_posted_at": iso(topic.last_posted_at),
        "visible": topic.visible,
        "closed": topic.closed,
        "archived": topic.archived,
        "archetype": topic.archetype,
        "slug": topic.slug,
        "category_id": topic.category_id,
        "word_count": sum(len(p.raw.split()) for p in posts),
        "deleted_at": iso(topic.deleted_at),
        "user_id": topic.user_id,
        "featured_link": None,
        "pinned_globally": False,
        "pinned_at": None,
        "pinned_until": None,
        "unpinned": None,
        "pinned": False,
        "highest_post_number": topic.highest_post_number,
        "deleted_by": (
            basic_user(_user(state, topic.deleted_by_id)) if topic.deleted_by_id else None
        ),
        "has_deleted": any(p.deleted_at is not None for p in state.topic_posts(topic.id, True)),
        "bookmarked": False,
        "participant_count": len({p.user_id for p in posts}),
        "thumbnails": None,
        "tags": [],
        "tags_descriptions": {},
    }
    if topic.external_id is not None:
        data["external_id"] = topic.external_id
    return data


def webhook_topic_json(state: ForumState, topic: Topic) -> dict[str, Any]:
    """WebHookTopicViewSerializer (reference §8.5): no post body, plus created_by/last_poster."""
    data = _topic_common(state, topic)
    data["featured_link_root_domain"] = None
    data["posted"] = False
    data["last_read_post_number"] = None
    data["created_by"] = basic_user(_user(state, topic.user_id))
    data["last_poster"] = basic_user(_user(state, topic.last_poster_id or topic.user_id))
    return data


def topic_view_json(
    state: ForumState, topic: Topic, viewer: User | None, posts: list[Post], include_raw: bool
) -> dict[str, Any]:
    """TopicViewSerializer for `GET /t/{id}.json` (one page of posts)."""
    staff = bool(viewer and viewer.staff)
    visible = [p for p in state.topic_posts(topic.id) if staff or p.post_type != 4]
    data = _topic_common(state, topic)
    stream_posts = []
    for post in posts:
        item = post_json(state, post, viewer, add_raw=include_raw, for_stream=True)
        item["link_counts"] = []
        item["read"] = True
        stream_posts.append(item)
    participants = []
    for uid in dict.fromkeys(p.user_id for p in visible):
        user = _user(state, uid)
        participants.append(
            {
                "id": user.id,
                "username": user.username,
                "name": user.name,
                "avatar_template": avatar_template(user),
                "post_count": sum(1 for p in visible if p.user_id == uid),
                "primary_group_name": None,
                "flair_name": None,
                "flair_url": None,
                "flair_color": None,
                "flair_bg_color": None,
                "flair_group_id": None,
                "admin": user.admin,
                "moderator": user.moderator,
                "trust_level": user.trust_level,
            }
        )
    data.update(
        {
            "post_stream": {"posts": stream_posts, "stream": [p.id for p in visible]},
            "timeline_lookup": [[1, 0]],
            "suggested_topics": [],
            "has_summary": False,
            "image_url": None,
            "slow_mode_seconds": 0,
            "draft": None,
            "draft_key": f"topic_{topic.id}",
            "draft_sequence": 0,
            "current_post_number": 1,
            "actions_summary": [],
            "chunk_size": 20,
            "bookmarks": [],
            "topic_timer": None,
            "message_bus_last_id": 0,
            "show_read_indicator": False,
            "slow_mode_enabled_until": None,
            "details": {
                "can_edit": staff,
                "notification_level": 1,
                "can_move_posts": staff,
                "can_delete": staff,
                "can_remove_allowed_users": staff,
                "can_create_post": not topic.closed or staff,
                "can_reply_as_new_topic": True,
                "can_convert_topic": staff,
                "can_review_topic": staff,
                "can_close_topic": staff,
                "can_archive_topic": staff,
                "can_split_merge_topic": staff,
                "can_edit_staff_notes": staff,
                "can_toggle_topic_visibility": staff,
                "can_pin_unpin_topic": staff,
                "can_moderate_category": staff,
                "can_remove_self_id": viewer.id if viewer else 0,
                "can_flag_topic": False,
                "participants": participants,
                "created_by": basic_user(_user(state, topic.user_id)),
                "last_poster": basic_user(_user(state, topic.last_poster_id or topic.user_id)),
            },
        }
    )
    return data


# Keys BasicCategorySerializer-based lists leave out (only the show/create answers carry them).
_CATEGORY_DETAIL_KEYS = (
    "all_topics_wiki allow_badges allow_global_tags allow_unlimited_owner_edits_on_first_post "
    "allowed_tag_groups allowed_tags auto_close_based_on_last_post auto_close_hours "
    "available_groups can_delete custom_fields default_slow_mode_seconds email_in "
    "email_in_allow_strangers group_permissions mailinglist_mirror parent_category_id "
    "read_only_banner required_tag_groups search_priority topic_featured_link_allowed "
    "allowed_tags allowed_tag_groups allow_global_tags"
).split()


def category_json(state: ForumState, category: Category, detailed: bool = True) -> dict[str, Any]:
    topics = [
        t for t in state.topics.values() if t.category_id == category.id and t.deleted_at is None
    ]
    post_count = sum(len(state.topic_posts(t.id)) for t in topics)
    subcategories = [
        c.id for c in state.categories.values() if c.parent_category_id == category.id
    ]
    data: dict[str, Any] = {
        "id": category.id,
        "name": category.name,
        "color": category.color,
        "text_color": category.text_color,
        "style_type": "square",
        "emoji": None,
        "icon": None,
        "topic_title_placeholder": None,
        "subcategory_count": len(subcategories),
        "topic_posting_review_group_ids": [],
        "reply_posting_review_group_ids": [],
        "slug": category.slug,
        "topic_count": len(topics),
        "post_count": post_count,
        "position": category.position,
        "description": category.description,
        "description_text": category.description,
        "description_excerpt": category.description,
        "topic_url": f"/t/about-the-{category.slug}-category",
        "read_restricted": category.allowed_user_ids is not None,
        "permission": 1,
        "notification_level": 1,
        "can_edit": True,
        "topic_template": None,
        "has_children": bool(subcategories),
        "subcategory_ids": subcategories,
        "sort_order": None,
        "sort_ascending": None,
        "show_subcategory_list": False,
        "num_featured_topics": 3,
        "default_view": None,
        "subcategory_list_style": "rows_with_featured_topics",
        "default_top_period": "all",
        "default_list_filter": "all",
        "minimum_required_tags": 0,
        "navigate_to_first_post_after_read": False,
        "custom_fields": {},
        "allowed_tags": [],
        "allowed_tag_groups": [],
        "allow_global_tags": False,
        "required_tag_groups": [],
        "read_only_banner": None,
        "available_groups": [],
        "auto_close_hours": None,
        "auto_close_based_on_last_post": False,
        "allow_unlimited_owner_edits_on_first_post": False,
        "default_slow_mode_seconds": None,
        "group_permissions": [{"permission_type": 1, "group_name": "everyone", "group_id": 0}],
        "email_in": None,
        "email_in_allow_strangers": False,
        "mailinglist_mirror": False,
        "all_topics_wiki": False,
        "can_delete": True,
        "allow_badges": True,
        "topic_featured_link_allowed": True,
        "search_priority": 0,
        "uploaded_logo": None,
        "uploaded_logo_dark": None,
        "uploaded_background": None,
        "uploaded_background_dark": None,
        "parent_category_id": category.parent_category_id,
    }
    if detailed:
        data.pop("subcategory_ids")
    else:
        for key in _CATEGORY_DETAIL_KEYS + ["topic_posting_review_group_ids"]:
            data.pop(key, None)
        data.pop("reply_posting_review_group_ids")
        data["parent_category_id"] = category.parent_category_id
        for period in ("day", "week", "month", "year", "all_time"):
            data[f"topics_{period}"] = len(topics)
    return data


def user_json(user: User, state: ForumState, detailed: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "avatar_template": avatar_template(user),
        "trust_level": user.trust_level,
        "admin": user.admin,
        "moderator": user.moderator,
        "active": user.active,
        "created_at": iso(user.created_at),
        "last_posted_at": None,
        "last_seen_at": None,
        "post_count": state.user_post_count(user.id),
        "suspended_till": iso(user.suspended_till) if state.is_suspended(user) else None,
        "silenced_till": iso(user.silenced_until) if state.is_silenced(user) else None,
        "staged": user.staged,
    }
    if detailed:
        data["email"] = user.email
        data["approved"] = user.approved
        data["external_id"] = user.external_id
    return data


def upload_json(upload: Upload) -> dict[str, Any]:
    b62 = base62(bytes.fromhex(upload.sha1))
    size = len(upload.data)
    human = f"{max(1, round(size / 1024))} KB" if size >= 1024 else f"{size} Bytes"
    thumb_w, thumb_h = upload.width, upload.height
    if upload.width and upload.height:
        ratio = min(690 / upload.width, 500 / upload.height, 1.0)
        thumb_w, thumb_h = int(upload.width * ratio), int(upload.height * ratio)
    return {
        "id": upload.id,
        "url": f"/uploads/default/original/1X/{upload.sha1}.{upload.extension}",
        "original_filename": upload.original_filename,
        "filesize": size,
        "width": upload.width,
        "height": upload.height,
        "thumbnail_width": thumb_w,
        "thumbnail_height": thumb_h,
        "extension": upload.extension,
        "short_url": f"upload://{b62}.{upload.extension}",
        "short_path": f"/uploads/short-url/{b62}.{upload.extension}",
        "retain_hours": None,
        "human_filesize": human,
        "dominant_color": None,
    }


def chat_message_json(state: ForumState, message: ChatMessage) -> dict[str, Any]:
    """Chat::MessageSerializer (reference §8.6)."""
    user = _user(state, message.user_id)
    data: dict[str, Any] = {
        "id": message.id,
        "message": message.message,
        "cooked": cook(message.message),
        "created_at": iso(message.created_at),
        "excerpt": html.escape(message.message[:50]),
        "deleted_at": iso(message.deleted_at),
        "chat_channel_id": message.channel_id,
        "streaming": False,
        "user": {
            "id": user.id,
            "username": user.username,
            "name": user.name,
            "avatar_template": avatar_template(user),
            "moderator": user.moderator,
            "admin": user.admin,
            "staff": user.staff,
            "new_user": user.trust_level == 0,
            "primary_group_name": None,
        },
        "mentioned_users": [],
        "available_flags": [],
        "user_flag_status": None,
        "reviewable_id": None,
        "edited": message.revisions > 0,
        "blocks": None,
        "chat_webhook_event": None,
        "uploads": [],
    }
    if message.deleted_at is not None:
        data["deleted_by_id"] = message.deleted_by_id
    channel = state.chat_channels.get(message.channel_id)
    if message.thread_id is not None and channel is not None and channel.threading_enabled:
        data["thread_id"] = message.thread_id
    if message.in_reply_to_id is not None:
        parent = state.chat_messages.get(message.in_reply_to_id)
        if parent is not None:
            data["in_reply_to"] = {
                "id": parent.id,
                "cooked": cook(parent.message),
                "excerpt": html.escape(parent.message[:50]),
                "user": basic_user(_user(state, parent.user_id)),
            }
    return data


def chat_channel_json(
    state: ForumState, channel: ChatChannel, viewer: User | None
) -> dict[str, Any]:
    """Chat::ChannelSerializer (reference §8.6)."""
    if channel.chatable_type == "Category":
        category = state.categories.get(channel.chatable_id)
        chatable: dict[str, Any] = (
            {
                "id": category.id,
                "name": category.name,
                "slug": category.slug,
                "color": category.color,
            }
            if category
            else {}
        )
        chatable_url = f"/c/{category.slug}/{category.id}" if category else None
        title = channel.name
    else:
        users = [basic_user(_user(state, uid)) for uid in channel.member_ids]
        chatable = {"id": channel.chatable_id, "group": channel.group, "users": users}
        chatable_url = None
        others = [u["username"] for u in users if not viewer or u["id"] != viewer.id]
        title = channel.name or ", ".join(others or [u["username"] for u in users])
    messages = [
        m for m in state.chat_messages.values() if m.channel_id == channel.id and not m.deleted_at
    ]
    last = max(messages, key=lambda m: m.id) if messages else None
    member = bool(viewer and viewer.id in channel.member_ids)
    return {
        "id": channel.id,
        "auto_join_users": channel.auto_join_users,
        "allow_channel_wide_mentions": True,
        "chatable": chatable,
        "chatable_id": channel.chatable_id,
        "chatable_type": channel.chatable_type,
        "chatable_url": chatable_url,
        "description": channel.description,
        "title": title,
        "unicode_title": title,
        "slug": channel.slug,
        "status": channel.status,
        "memberships_count": len(channel.member_ids),
        "current_user_membership": {
            "following": member,
            "muted": False,
            "chat_channel_id": channel.id,
        },
        "meta": {"message_bus_last_ids": {}, "can_delete_self": True},
        "threading_enabled": channel.threading_enabled,
        "icon_upload_url": None,
        "last_message": (
            {"id": last.id, "message": last.message, "created_at": iso(last.created_at)}
            if last
            else None
        ),
    }
