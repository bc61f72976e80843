"""media.upload (multipart, media, resumable), media.download with Range, and the discovery URL.

Every response these tests receive is validated against chat.v1.json when `world` tears down.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
import requests
from google.oauth2.credentials import Credentials
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaInMemoryUpload, MediaIoBaseDownload

from emulators.google_chat import ChatEmulator
from tests.emulators.chat_contract import (
    ChatWorld,
    RecordingHttp,
    contract_errors,
    error_status,
    make_world,
)

DATA = bytes(range(256)) * 3 + b"tail\r\n--not-a-boundary\r\n"


@pytest.fixture
def world(chat_emulator: ChatEmulator) -> Iterator[ChatWorld]:
    w = make_world(chat_emulator)
    yield w
    errors = contract_errors(w.spec, w.all_exchanges())
    assert not errors, "\n".join(errors)


def _upload(w: ChatWorld, media: MediaInMemoryUpload, body: dict | None) -> dict:
    kwargs = {"body": body} if body is not None else {}
    return w.chat.media().upload(parent=w.space, media_body=media, **kwargs).execute()


def _download(w: ChatWorld, resource: str, chunksize: int = 100) -> bytes:
    buf = io.BytesIO()
    downloader = MediaIoBaseDownload(
        buf, w.chat.media().download_media(resourceName=resource), chunksize=chunksize
    )
    done = False
    while not done:
        _status, done = downloader.next_chunk()
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["multipart", "media", "resumable"])
def test_upload_formats_attach_and_download(world: ChatWorld, fmt: str) -> None:
    media = MediaInMemoryUpload(DATA, mimetype="application/pdf", resumable=fmt == "resumable")
    body = None if fmt == "media" else {"filename": "report.pdf"}
    ref = _upload(world, media, body)
    resource = ref["attachmentDataRef"]["resourceName"]
    assert resource.startswith(f"{world.space}/attachments/")
    upload_types = [
        q.get("uploadType") for q in (r["query"] for r in world.emu.control.requests()["requests"])
    ]
    assert fmt in upload_types
    msg = (
        world.chat.spaces()
        .messages()
        .create(parent=world.space, body={"text": "file", "attachment": [ref]})
        .execute()
    )
    (att,) = msg["attachment"]
    assert att["contentType"] == "application/pdf"
    assert att["attachmentDataRef"]["resourceName"] == resource
    assert att["source"] == "UPLOADED_CONTENT"
    if fmt != "media":
        assert att["contentName"] == "report.pdf"
    # Chunked download: Range requests answered with 206 and Content-Range.
    assert _download(world, resource, chunksize=100) == DATA
    statuses = [r["status"] for r in world.emu.control.requests()["requests"][-3:]]
    assert statuses == [206, 206, 206]


def test_range_requests_raw(world: ChatWorld) -> None:
    ref = _upload(world, MediaInMemoryUpload(b"0123456789", mimetype="text/plain"), None)
    url = f"{world.emu.url}/v1/media/{ref['attachmentDataRef']['resourceName']}?alt=media"
    auth = {"Authorization": f"Bearer {world.tokens['access_token']}"}
    whole = requests.get(url, headers=auth, timeout=10)
    assert whole.status_code == 200 and whole.content == b"0123456789"
    part = requests.get(url, headers={**auth, "Range": "bytes=2-4"}, timeout=10)
    assert part.status_code == 206 and part.content == b"234"
    assert part.headers["Content-Range"] == "bytes 2-4/10"
    suffix = requests.get(url, headers={**auth, "Range": "bytes=-3"}, timeout=10)
    assert suffix.content == b"789" and suffix.headers["Content-Range"] == "bytes 7-9/10"
    beyond = requests.get(url, headers={**auth, "Range": "bytes=20-"}, timeout=10)
    assert beyond.status_code == 416 and beyond.json()["error"]["code"] == 416
    meta = requests.get(url.replace("?alt=media", "?alt=json"), headers=auth, timeout=10)
    assert meta.json() == {"resourceName": ref["attachmentDataRef"]["resourceName"]}


def test_resumable_upload_in_chunks_and_size_limit(world: ChatWorld) -> None:
    media = MediaInMemoryUpload(DATA, mimetype="image/png", chunksize=256, resumable=True)
    req = world.chat.media().upload(
        parent=world.space, body={"filename": "a.png"}, media_body=media
    )
    response = None
    chunks = 0
    while response is None:
        _status, response = req.next_chunk()
        chunks += 1
    assert chunks > 2
    assert _download(world, response["attachmentDataRef"]["resourceName"], 10_000) == DATA
    auth = {"Authorization": f"Bearer {world.tokens['access_token']}"}
    too_big = requests.post(
        f"{world.emu.url}/upload/v1/{world.space}/attachments:upload?uploadType=resumable",
        json={"filename": "huge.bin"},
        headers={**auth, "X-Upload-Content-Length": str(209_715_201)},
        timeout=10,
    )
    assert too_big.status_code == 400
    assert too_big.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_download_errors_and_foreign_attachment(world: ChatWorld) -> None:
    with pytest.raises(HttpError) as info:
        _download(world, f"{world.space}/attachments/missing")
    assert error_status(info.value) == (404, "NOT_FOUND")
    ref = _upload(world, MediaInMemoryUpload(b"x", mimetype="text/plain"), None)
    other = world.emu.control.create_space([world.alice], display_name="Other")
    call = (
        world.chat.spaces()
        .messages()
        .create(parent=other["name"], body={"text": "wrong space", "attachment": [ref]})
    )
    with pytest.raises(HttpError) as info:
        call.execute()
    assert error_status(info.value) == (400, "INVALID_ARGUMENT")


def test_human_attachment_from_control_api(world: ChatWorld) -> None:
    msg = world.emu.control.post_message(
        world.space,
        world.bob,
        "see attached",
        attachments=[
            {
                "filename": "notes.txt",
                "contentType": "text/plain",
                "dataBase64": base64.b64encode(b"hello notes").decode(),
            }
        ],
    )
    got = world.chat.spaces().messages().get(name=msg["name"]).execute()
    resource = got["attachment"][0]["attachmentDataRef"]["resourceName"]
    assert _download(world, resource) == b"hello notes"


def test_build_through_discovery_url(world: ChatWorld) -> None:
    """The second wiring of reference §1.4: googleapiclient fetches the emulator's discovery."""
    http = RecordingHttp(timeout=10)
    world.extra_https.append(http)
    chat = build(
        "chat",
        "v1",
        http=AuthorizedHttp(Credentials(token=world.tokens["access_token"]), http=http),
        discoveryServiceUrl=world.emu.discovery_url(),
        static_discovery=False,
        cache_discovery=False,
    )
    ref = (
        chat.media()
        .upload(
            parent=world.space,
            body={"filename": "d.txt"},
            media_body=MediaInMemoryUpload(b"via discovery", mimetype="text/plain"),
        )
        .execute()
    )
    assert ref["attachmentDataRef"]["resourceName"]
    doc = requests.get(f"{world.emu.url}/$discovery/rest?version=v1", timeout=10).json()
    assert doc["rootUrl"] == world.emu.url + "/" and doc["baseUrl"] == world.emu.url + "/"
    # Discovery fetches are not API calls and never enter the request log.
    assert not any(r["path"].startswith("/$") for r in world.emu.control.requests()["requests"])
