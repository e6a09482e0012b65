"""The client side of the OCI distribution protocol: manifests and blobs from one endpoint.

Auth follows the registry's `WWW-Authenticate` challenge: `Bearer` (ask the token realm, with the
request's credentials if any) or `Basic`. Tokens are kept per scope for the life of one pull.
"""

from __future__ import annotations

import base64
import re
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
_TIMEOUT = httpx.Timeout(30.0, read=60.0)


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


class RegistryClient:
    """One pull's conversation with one endpoint about one repository."""

    def __init__(self, endpoint: Endpoint, repo: str, auth: RegistryAuth | None) -> None:
        self.endpoint = endpoint
        self.repo = repo
        self.auth = auth
        self._authorization = ""
        self._http = httpx.AsyncClient(verify=endpoint.verify, timeout=_TIMEOUT,
                                       follow_redirects=True)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, kind: str, ref: str) -> str:
        return f"{self.endpoint.url}/v2/{self.repo}/{kind}/{ref}"

    async def _send(self, url: str, headers: dict[str, str]) -> httpx.Response:
        """GET with streaming; answers a 401 challenge once and retries."""
        for attempt in range(2):
            request_headers = dict(headers)
            if self._authorization:
                request_headers["Authorization"] = self._authorization
            try:
                response = await self._http.send(
                    self._http.build_request("GET", url, headers=request_headers), stream=True)
            except httpx.HTTPError as exc:
                raise EndpointError(f"cannot reach {self.endpoint.url}: {exc}") from exc
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
                response = await self._http.post(params["realm"], data=form)
            else:
                response = await self._http.get(params["realm"], params=query,
                                                auth=basic if basic else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise EndpointError(f"cannot reach token server {params['realm']}: {exc}") from exc
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
        body = (await response.aread())[:300].decode(errors="replace")
        await response.aclose()
        if response.status_code == 401:
            raise self._denied()
        if response.status_code == 404:
            raise EndpointNotFound(f"{what} not found at {self.endpoint.url}")
        raise EndpointError(f"{self.endpoint.url} answered {response.status_code} for {what}: {body}")

    async def manifest(self, ref: str) -> tuple[bytes, str]:
        """The manifest's bytes and media type; the caller checks its digest."""
        what = f"manifest {self.repo}:{ref}" if ":" not in ref else f"manifest {self.repo}@{ref}"
        response = await self._send(self._url("manifests", ref),
                                    {"Accept": ", ".join(MANIFEST_TYPES)})
        await self._check(response, what)
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise EndpointError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise EndpointError(f"reading {what} from {self.endpoint.url}: {exc}") from exc
        finally:
            await response.aclose()
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return bytes(data), media_type

    @asynccontextmanager
    async def blob(self, digest: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The blob's bytes as they arrive; the caller hashes and checks them."""
        response = await self._send(self._url("blobs", digest), {})
        await self._check(response, f"blob {digest} of {self.repo}")
        try:
            yield self._chunks(response, digest)
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response, digest: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw(1 << 20):
                yield chunk
        except httpx.HTTPError as exc:
            raise EndpointError(f"reading blob {digest} from {self.endpoint.url}: {exc}") from exc
