"""The client side of the OCI distribution protocol: manifests and blobs from one endpoint.

Auth follows the registry's `WWW-Authenticate` challenge: `Bearer` (ask the token realm, with the
request's credentials if any) or `Basic`. Tokens are kept per scope for the life of one pull.

A transfer is given up on lack of progress, not on total time: when no byte arrives for
`progress_timeout` seconds (containerd's `image_pull_progress_timeout`), so a slow but moving download of
a large layer goes on, and a registry that pauses for less than that finishes the pull.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import http.cookiejar
import json
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from crishim.errors import InvalidArgument, NotFound, Unavailable
from crishim.image.registry_config import Endpoint

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_MANIFEST_BYTES = 4 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_CONNECT_TIMEOUT = 30.0
_WRITE_BATCH = 1 << 20  # bytes handed to the writer at once
_ERROR_BODY_BYTES = 4096  # of an error answer, enough for the distribution API's JSON errors


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials from the CRI request's AuthConfig."""

    username: str = ""
    password: str = ""
    auth: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def basic(self) -> tuple[str, str] | None:
        if self.username or self.password:
            return self.username, self.password
        if self.auth:
            try:
                user, _, password = base64.b64decode(self.auth).decode().partition(":")
            except ValueError as exc:
                raise InvalidArgument("auth.auth is not base64 of user:password") from exc
            return user, password
        return None


class EndpointError(Unavailable):
    """This endpoint failed to serve the request; another mirror may still succeed."""


class EndpointNotFound(NotFound):
    """This endpoint does not have the manifest or blob."""


class ContentMismatch(EndpointError):
    """A registry served bytes that do not match the digest or size that describe them."""


class PullStalled(EndpointError):
    """No byte arrived from the registry for the progress timeout.

    UNAVAILABLE like any registry failure (the registry is at fault, not the request, and a retry may
    work), and the next mirror is tried. containerd cancels the pull and answers CANCELLED, which a
    client cannot tell from its own cancellation.
    """


def _reason(exc: httpx.HTTPError) -> str:
    """httpx's timeouts and some protocol errors have an empty message: name the error then."""
    return str(exc) or type(exc).__name__


def _registry_errors(status: int, body: str) -> str:
    """`CODE: message` of each error of a distribution API error body, else the status and body."""
    try:
        found = "; ".join(f"{e['code']}: {e.get('message', '')}" for e in json.loads(body)["errors"])
    except (ValueError, LookupError, TypeError, AttributeError):
        found = ""
    return found or f"HTTP {status}" + (f": {body[:300]}" if body.strip() else " with no body")


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """The system's trust store, loaded once per process: loading it takes some 20 ms, which httpx
    would spend (on the event loop) for every pull, plain HTTP ones included."""
    return httpx.create_ssl_context()


def _warm_up() -> None:
    """Blocking: what the first pull would otherwise spend on the event loop, some 50 ms. httpx loads
    httpcore, h11 and anyio's parts on a client's first request, and the system's trust store is read
    once (`_default_tls`); one request of its own over loopback, on a loop of its own, loads the same,
    whatever those libraries' versions load. Best effort: a failure here is met again, and reported, by a
    pull."""
    with contextlib.suppress(Exception):
        asyncio.run(_first_request())


async def _first_request() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0)
    # trust_env=False: no proxy from the environment may see this request
    async with listener, httpx.AsyncClient(verify=_default_tls(), trust_env=False) as client:
        await client.get(f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/")


class HttpPool:
    """HTTP clients shared by pulls, so a pull reuses the connections of the last one to the registry.

    One client per trust setting every endpoint shares (the system's store, or no verification), so a
    connection set up unverified never serves a verified pull. An endpoint with a CA file of its own gets
    a client for the one pull (its SSL context is built anew each time the host file is read). Shared
    clients keep no cookies: one pull's credentials must not travel with another's. No limit on the
    connections: concurrent pulls must not wait on one another for a slot.
    """

    def __init__(self) -> None:
        self._shared: dict[bool, httpx.AsyncClient] = {}
        self._warming: asyncio.Future[None] | None = None

    def warm_up(self) -> None:
        """Load in a thread, from now on, what the first request would load on the event loop."""
        if self._warming is None:
            self._warming = asyncio.ensure_future(asyncio.to_thread(_warm_up))

    async def warmed(self) -> None:
        """Wait for a warm-up still running: a pull meeting it halfway would contend with it for the
        same imports, and take longer than either."""
        if self._warming is not None and not self._warming.done():
            await asyncio.shield(self._warming)  # a cancelled pull leaves the warm-up to finish

    def _new(self, verify: ssl.SSLContext | bool, cookies: http.cookiejar.CookieJar | None = None
             ) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=_default_tls() if verify is True else verify,
                                 follow_redirects=True, cookies=cookies,
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=20))

    def client(self, endpoint: Endpoint) -> tuple[httpx.AsyncClient, bool]:
        """A client for `endpoint`, and whether the caller owns it (closes it after its pull)."""
        if not isinstance(endpoint.verify, bool):
            return self._new(endpoint.verify), True
        shared = self._shared.get(endpoint.verify)
        if shared is None:
            # A CookieJar, not an httpx.Cookies: httpx copies the latter into a jar of the default policy.
            no_cookies = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
            shared = self._new(endpoint.verify, http.cookiejar.CookieJar(no_cookies))
            self._shared[endpoint.verify] = shared
        return shared, False

    async def aclose(self) -> None:
        if self._warming is not None:
            await self._warming  # a thread: it cannot be cancelled, and it is short
        shared, self._shared = list(self._shared.values()), {}
        for client in shared:
            await client.aclose()


class RegistryClient:
    """One pull's conversation with one endpoint about one repository."""

    def __init__(self, endpoint: Endpoint, repo: str, auth: RegistryAuth | None, pool: HttpPool,
                 progress_timeout: float) -> None:
        self.endpoint = endpoint
        self.repo = repo
        self.auth = auth
        self.progress_timeout = progress_timeout
        self._authorization = ""
        # httpx's read timeout bounds the wait for each socket read: no progress, not total time.
        self._timeout = httpx.Timeout(_CONNECT_TIMEOUT, read=progress_timeout)
        self._http, self._owned = pool.client(endpoint)

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    def _url(self, kind: str, ref: str) -> str:
        return f"{self.endpoint.url}/v2/{self.repo}/{kind}/{ref}"

    async def _send(self, url: str, headers: dict[str, str], what: str) -> httpx.Response:
        """GET with streaming; answers a 401 challenge once and retries."""
        for attempt in range(2):
            request_headers = dict(headers)
            if self._authorization:
                request_headers["Authorization"] = self._authorization
            request = self._http.build_request("GET", url, headers=request_headers, timeout=self._timeout)
            try:
                try:
                    response = await self._http.send(request, stream=True)
                except httpx.RemoteProtocolError:
                    # A kept-alive connection the registry closed as the GET went out (the shared
                    # pool's hazard): nothing was answered, and a GET may be sent again.
                    response = await self._http.send(request, stream=True)
            except httpx.ReadTimeout as exc:
                raise PullStalled(f"no answer from {self.endpoint.url} for {what} in "
                                  f"{self.progress_timeout:g} s") from exc
            except httpx.HTTPError as exc:
                raise EndpointError(f"cannot reach {self.endpoint.url}: {_reason(exc)}") from exc
            if response.status_code != 401 or attempt == 1:
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            await response.aclose()
            await self._authenticate(challenge)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _authenticate(self, challenge: str) -> None:
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        basic = self.auth.basic() if self.auth else None
        if scheme.lower() == "basic":
            if basic is None:
                raise self._denied()
            token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
            self._authorization = f"Basic {token}"
            return
        if scheme.lower() != "bearer" or "realm" not in params:
            raise EndpointError(f"{self.endpoint.url} asks for unsupported auth {challenge!r}")
        if self.auth and self.auth.registry_token:
            self._authorization = f"Bearer {self.auth.registry_token}"
            return
        self._authorization = f"Bearer {await self._fetch_token(params, basic)}"

    async def _fetch_token(self, params: dict[str, str], basic: tuple[str, str] | None) -> str:
        query = {"scope": params.get("scope", f"repository:{self.repo}:pull")}
        if "service" in params:
            query["service"] = params["service"]
        try:
            if self.auth and self.auth.identity_token:
                form = {**query, "grant_type": "refresh_token", "client_id": "crishim",
                        "refresh_token": self.auth.identity_token}
                response = await self._http.post(params["realm"], data=form, timeout=self._timeout)
            else:
                response = await self._http.get(params["realm"], params=query, timeout=self._timeout,
                                                auth=basic if basic else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise EndpointError(f"cannot reach token server {params['realm']}: {_reason(exc)}") from exc
        if response.status_code in (401, 403):
            raise self._denied()
        if response.status_code != 200:
            raise EndpointError(f"token server {params['realm']} answered {response.status_code}")
        try:
            body: dict[str, Any] = response.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise EndpointError(f"token server {params['realm']} answered without a token")
        return token

    def _denied(self) -> Exception:
        if self.auth and (self.auth.basic() or self.auth.identity_token):
            return InvalidArgument(f"{self.endpoint.url} rejected the credentials for {self.repo}")
        return EndpointNotFound(f"{self.endpoint.url}: {self.repo} requires authentication "
                                "(no credentials given)")

    async def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code == 200:
            return
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) >= _ERROR_BODY_BYTES:
                    break
        except httpx.HTTPError as exc:  # the status is known: say it, whatever became of the body
            data += f"[{_reason(exc)} while reading the answer]".encode()
        finally:
            await response.aclose()
        body = data[:_ERROR_BODY_BYTES].decode(errors="replace")
        if response.status_code == 401:
            raise self._denied()
        if response.status_code == 404:  # MANIFEST_UNKNOWN, NAME_UNKNOWN, BLOB_UNKNOWN or a bare 404
            raise EndpointNotFound(f"{what} not found at {self.endpoint.url} "
                                   f"({_registry_errors(404, body)})")
        raise EndpointError(f"{self.endpoint.url} answered for {what}: "
                            f"{_registry_errors(response.status_code, body)}")

    async def manifest(self, ref: str) -> tuple[bytes, str]:
        """The manifest's bytes and media type; the caller checks its digest."""
        what = f"manifest {self.repo}:{ref}" if ":" not in ref else f"manifest {self.repo}@{ref}"
        response = await self._send(self._url("manifests", ref),
                                    {"Accept": ", ".join(MANIFEST_TYPES)}, what)
        await self._check(response, what)
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise EndpointError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
        except httpx.ReadTimeout as exc:
            raise self._stalled(what, len(data), response.headers.get("Content-Length", "?")) from exc
        except httpx.HTTPError as exc:
            raise EndpointError(f"reading {what} from {self.endpoint.url}: {_reason(exc)}") from exc
        finally:
            await response.aclose()
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return bytes(data), media_type

    def _stalled(self, what: str, received: int, total: int | str) -> PullStalled:
        return PullStalled(f"no progress for {self.progress_timeout:g} s: {self.endpoint.url} stopped "
                           f"sending {what} after {received} of {total} bytes")

    @asynccontextmanager
    async def blob(self, digest: str, size: int) -> AsyncIterator[AsyncIterator[bytes]]:
        """The blob's bytes as they arrive, exactly `size` of them; the caller checks the digest."""
        what = f"blob {digest} of {self.repo}"
        response = await self._send(self._url("blobs", digest), {}, what)
        await self._check(response, what)
        try:
            announced = response.headers.get("Content-Length")
            if announced is not None and announced != str(size) \
                    and not response.headers.get("Content-Encoding"):
                raise ContentMismatch(f"{self.endpoint.url} announces {announced} bytes for {what}, "
                                      f"the manifest declares {size}")
            yield self._chunks(response, what, size)
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response, what: str, size: int) -> AsyncIterator[bytes]:
        received = 0
        batch: list[bytes] = []  # joined once: one copy of each byte, not two
        batched = 0
        try:
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > size:
                    raise ContentMismatch(f"{self.endpoint.url} sent more than the {size} bytes the "
                                          f"manifest declares for {what}")
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _WRITE_BATCH:
                    yield b"".join(batch)
                    batch.clear()
                    batched = 0
        except httpx.ReadTimeout as exc:
            raise self._stalled(what, received, size) from exc
        except httpx.HTTPError as exc:
            raise EndpointError(f"reading {what} from {self.endpoint.url} after {received} of {size} "
                                f"bytes: {_reason(exc)}") from exc
        if received != size:
            raise ContentMismatch(f"{self.endpoint.url} sent {received} of the {size} bytes the manifest "
                                  f"declares for {what}")
        if batch:
            yield b"".join(batch)
