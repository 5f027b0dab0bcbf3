"""A typed async client of Toxiproxy's HTTP API (v2), and the toxics the fault tests inject.

Toxiproxy (scripts/toxiproxy.sh) forwards TCP from a `listen` address to an `upstream` one;
a toxic on a proxy acts on one direction of its links: `upstream` is client to server,
`downstream` server to client. `Proxy.add(..., direction="both")` adds one toxic a direction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aiohttp

ToxicType = Literal["timeout", "reset_peer", "latency", "bandwidth", "limit_data", "slow_close"]
Stream = Literal["upstream", "downstream"]
Direction = Literal["upstream", "downstream", "both"]

REQUEST_TIMEOUT_S = 10.0  # the API answers at once; a hang means the server is gone


class ToxiproxyError(RuntimeError):
    """The API refused a request; the message carries its status and answer."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"toxiproxy {method} {path}: HTTP {status}: {body.strip()[:500]}")
        self.status = status


@dataclass(frozen=True)
class ToxicSpec:
    """What a toxic does, before it is put on a proxy."""

    type: ToxicType
    attributes: Mapping[str, int]


def timeout(ms: int) -> ToxicSpec:
    """No data passes; the connection is closed after `ms` (never, with 0)."""
    return ToxicSpec("timeout", {"timeout": ms})


def blackhole() -> ToxicSpec:
    """No data passes and nothing is closed: the peer just stops answering, until removed."""
    return timeout(0)


def reset_peer(after_ms: int = 0) -> ToxicSpec:
    """The connection is reset (TCP RST) `after_ms` after data next arrives."""
    return ToxicSpec("reset_peer", {"timeout": after_ms})


def latency(ms: int, jitter_ms: int = 0) -> ToxicSpec:
    """Every chunk of data is delayed by `ms` plus or minus up to `jitter_ms`."""
    return ToxicSpec("latency", {"latency": ms, "jitter": jitter_ms})


def bandwidth(kb_per_s: int) -> ToxicSpec:
    """At most `kb_per_s` kilobytes a second pass."""
    return ToxicSpec("bandwidth", {"rate": kb_per_s})


def limit_data(byte_count: int) -> ToxicSpec:
    """The connection is closed once `byte_count` bytes have passed."""
    return ToxicSpec("limit_data", {"bytes": byte_count})


@dataclass(frozen=True)
class Toxic:
    """A toxic on a proxy, as the server reports it."""

    name: str
    type: str
    stream: Stream
    toxicity: float
    attributes: Mapping[str, int]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Toxic:
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            stream=data["stream"],
            toxicity=float(data["toxicity"]),
            attributes=dict(data.get("attributes") or {}),
        )


class Proxy:
    """One proxy: clients connect to `address`, it forwards to `upstream`."""

    def __init__(self, client: Toxiproxy, data: Mapping[str, Any]) -> None:
        self._client = client
        self.name = str(data["name"])
        self.listen = str(data["listen"])
        self.upstream = str(data["upstream"])
        self.enabled = bool(data["enabled"])

    def __repr__(self) -> str:
        return f"Proxy({self.name!r}, {self.listen} -> {self.upstream})"

    @property
    def host(self) -> str:
        host = self.listen.rpartition(":")[0].strip("[]")
        return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def address(self) -> str:
        """host:port for a client to connect to."""
        return f"{self.host}:{self.port}"

    @property
    def _path(self) -> str:
        return f"/proxies/{self.name}"

    async def add(
        self,
        spec: ToxicSpec,
        direction: Direction = "both",
        *,
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> list[Toxic]:
        """Put `spec` on the links in `direction`; one toxic a direction, named
        `<name or type>_<stream>`."""
        streams: tuple[Stream, ...] = get_args(Stream) if direction == "both" else (direction,)
        added = []
        for stream in streams:
            data = await self._client.request(
                "POST",
                f"{self._path}/toxics",
                {
                    "name": f"{name or spec.type}_{stream}",
                    "type": spec.type,
                    "stream": stream,
                    "toxicity": toxicity,
                    "attributes": dict(spec.attributes),
                },
            )
            added.append(Toxic.from_json(data))
        return added

    async def toxics(self) -> list[Toxic]:
        return [
            Toxic.from_json(t) for t in await self._client.request("GET", f"{self._path}/toxics")
        ]

    async def remove(self, *toxics: Toxic | str) -> None:
        """Remove the toxics (or toxic names) given; links then flow again."""
        for toxic in toxics:
            name = toxic if isinstance(toxic, str) else toxic.name
            await self._client.request("DELETE", f"{self._path}/toxics/{name}")

    async def clear(self) -> None:
        """Remove every toxic of this proxy."""
        await self.remove(*await self.toxics())

    async def disable(self) -> None:
        """Take the proxy down: its listener closes and every link through it is dropped."""
        await self._update(enabled=False)

    async def enable(self) -> None:
        await self._update(enabled=True)

    async def heal(self) -> None:
        """Back to a plain pipe: enabled, no toxics."""
        await self.clear()
        await self.enable()  # whatever this object last saw: another may have disabled it

    async def delete(self) -> None:
        await self._client.request("DELETE", self._path)

    @contextlib.asynccontextmanager
    async def fault(
        self, spec: ToxicSpec, direction: Direction = "both", *, toxicity: float = 1.0
    ) -> AsyncIterator[list[Toxic]]:
        """The toxic for the duration of the block; removed on the way out, however it ends."""
        added = await self.add(spec, direction, toxicity=toxicity)
        try:
            yield added
        finally:
            await self.remove(*added)

    async def _update(self, **fields: Any) -> None:
        data = await self._client.request("POST", self._path, fields)
        self.enabled = bool(data["enabled"])


class Toxiproxy:
    """The server at `url` (http://host:port). Use as `async with Toxiproxy(url) as api:`."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Toxiproxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def version(self) -> str:
        session = self._open()
        async with session.get(f"{self.url}/version") as response:
            return (await response.text()).strip()

    async def create(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> Proxy:
        """A new proxy; with port 0 the server picks a free one (see `Proxy.port`)."""
        data = await self.request(
            "POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream}
        )
        return Proxy(self, data)

    async def get(self, name: str) -> Proxy:
        return Proxy(self, await self.request("GET", f"/proxies/{name}"))

    async def proxies(self) -> dict[str, Proxy]:
        data: Mapping[str, Any] = await self.request("GET", "/proxies")
        return {name: Proxy(self, proxy) for name, proxy in data.items()}

    async def reset(self) -> None:
        """Every proxy enabled again, every toxic removed."""
        await self.request("POST", "/reset")

    async def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        session = self._open()
        async with session.request(method, f"{self.url}{path}", json=body) as response:
            text = await response.text()
            if response.status >= 400:
                raise ToxiproxyError(method, path, response.status, text)
            return await response.json(content_type=None) if text.strip() else None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            )
        return self._session
