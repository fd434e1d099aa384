"""On-demand loading for serving nodes: a model's tensors by name, each fetched when first touched.

`open_model` reads the manifest and, for every safetensors file of the model (and of its
base, for a LoRA model), only the header block(s). Touching a tensor fetches the blocks
that hold its bytes (one block, or the slices of a large tensor) into the local block
store, verified, then reads them into an array. Blocks shared with models already
pulled are never fetched again. The mapping is synchronous (it drives its own event loop
in a background thread, so it works from plain code, torch loaders and threads); code
already on an event loop uses the `*_async` methods.
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import numpy as np

from cachenet.blockstore import BlockStore
from cachenet.errors import BadInput
from cachenet.manifest import BlockRef, FileManifest, ModelManifest
from cachenet.names import validate_model_name, validate_revision
from clients.config import DEFAULT_SETTINGS, PullSettings
from clients.fetch import BlockFetcher
from clients.localstore import open_local_store, read_file_range
from clients.puller import PullReport, fetch_and_write, resolve_model
from clients.sources import SourcePool
from clients.tensorfile import (
    TensorFileInfo,
    TensorInfo,
    header_length,
    numpy_dtype,
    parse_tensor_header,
)

__all__ = ("Framework", "RemoteModel", "open_model", "open_model_async")
log = logging.getLogger(__name__)

Framework = Literal["np", "pt"]
T = TypeVar("T")
_TORCH_DTYPES: Final = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


class RemoteModel(Mapping[str, Any]):
    """Read-only mapping tensor name → numpy array (torch with framework='pt'), fetched lazily."""

    def __init__(
        self,
        manifest: ModelManifest,
        base: ModelManifest | None,
        tensors: dict[str, tuple[FileManifest, TensorInfo]],
        headers: dict[str, TensorFileInfo],
        *,
        store: BlockStore,
        fetcher: BlockFetcher,
        runner: "_LoopThread",
        framework: Framework,
        owns_store: bool = False,
    ) -> None:
        self.manifest = manifest
        self.base = base
        self.headers = headers
        self.store = store
        self.framework = framework
        self._tensors = tensors
        self._fetcher = fetcher
        self._runner = runner
        self._owns_store = owns_store

    # -- the mapping -------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        if name not in self._tensors:
            raise KeyError(name)
        return self._runner.run(self.get_async(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def info(self, name: str) -> TensorInfo:
        """Dtype, shape and byte range of a tensor, without fetching it."""
        return self._tensors[name][1]

    def blocks_of(self, name: str) -> list[BlockRef]:
        """The blocks that hold a tensor's bytes."""
        f, t = self._tensors[name]
        return [ref for ref, _, _ in f.segments_in(t.start, t.end)]

    @property
    def fetched_bytes(self) -> int:
        """Bytes fetched from the sources since the model was opened (headers included)."""
        return self._fetcher.stats().fetched_bytes

    # -- loading -----------------------------------------------------------------------

    async def get_async(self, name: str) -> Any:
        """A tensor, fetching its blocks first if needed; for code running on an event loop."""
        return await self._runner.wrap(self._load(name))

    def prefetch(self, names: Iterable[str] | None = None) -> int:
        """Fetch the blocks of `names` (every tensor when None) now; returns the bytes fetched."""
        return self._runner.run(self._prefetch(None if names is None else list(names)))

    async def prefetch_async(self, names: Iterable[str] | None = None) -> int:
        """`prefetch` for code running on an event loop."""
        return await self._runner.wrap(self._prefetch(None if names is None else list(names)))

    def materialize(self, out_dir: Path, *, merge_lora: bool = False, progress: bool | None = False) -> PullReport:
        """Write the model's files to `out_dir` (fetching what is still missing), as `pull` does."""
        return self._runner.run(self._materialize(Path(out_dir), merge_lora, progress))

    async def materialize_async(
        self, out_dir: Path, *, merge_lora: bool = False, progress: bool | None = False
    ) -> PullReport:
        """`materialize` for code running on an event loop."""
        return await self._runner.wrap(self._materialize(Path(out_dir), merge_lora, progress))

    def close(self) -> None:
        """Close the HTTP session, stop the background loop, release a store it opened."""
        self._runner.close(self._fetcher.pool.close())
        if self._owns_store:
            self.store.close()

    async def aclose(self) -> None:
        """`close` for code running on an event loop."""
        if not self._runner.loop.is_closed():
            await self._runner.wrap(self._fetcher.pool.close())
        await asyncio.to_thread(self._runner.close, None)
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _load(self, name: str) -> Any:
        try:
            f, t = self._tensors[name]
        except KeyError:
            raise KeyError(name) from None
        await self._fetcher.ensure(self.blocks_of(name))
        data = await asyncio.to_thread(read_file_range, self.store, f, t.start, t.end)
        return _to_array(data, t, self.framework)

    async def _prefetch(self, names: list[str] | None) -> int:
        chosen = list(self._tensors) if names is None else names
        unknown = [n for n in chosen if n not in self._tensors]
        if unknown:
            raise KeyError(", ".join(unknown[:5]))
        before = self._fetcher.stats().fetched_bytes
        await self._fetcher.ensure(ref for n in chosen for ref in self.blocks_of(n))
        return self._fetcher.stats().fetched_bytes - before

    async def _materialize(self, out_dir: Path, merge_lora: bool, progress: bool | None) -> PullReport:
        return await fetch_and_write(
            self.manifest,
            self.base,
            store=self.store,
            fetcher=self._fetcher,
            out_dir=out_dir,
            merge_lora=merge_lora,
            progress=progress,
        )


def open_model(
    name: str,
    *,
    sources: Sequence[str],
    revision: str = "main",
    store: BlockStore | Path | None = None,
    framework: Framework = "np",
    prefetch: Iterable[str] = (),
    settings: PullSettings = DEFAULT_SETTINGS,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RemoteModel:
    """Open a model for on-demand loading: fetches the manifest and safetensors headers only.

    Raises `ModelNotFound`, `UpstreamUnavailable`, `SafetensorsInvalid`, `BadInput`
    (duplicate tensor names, unknown framework). Do not call it from a running event
    loop whose servers it talks to: use `open_model_async` there.
    """
    runner = _LoopThread()
    try:
        return runner.run(
            _open(
                runner,
                name,
                sources,
                revision,
                store,
                framework,
                tuple(prefetch),
                settings,
                env,
                clock,
            )
        )
    except BaseException:
        runner.close(None)
        raise


async def open_model_async(
    name: str,
    *,
    sources: Sequence[str],
    revision: str = "main",
    store: BlockStore | Path | None = None,
    framework: Framework = "np",
    prefetch: Iterable[str] = (),
    settings: PullSettings = DEFAULT_SETTINGS,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RemoteModel:
    """`open_model` for code running on an event loop (the model still has its own loop thread)."""
    runner = _LoopThread()
    try:
        return await runner.wrap(
            _open(
                runner,
                name,
                sources,
                revision,
                store,
                framework,
                tuple(prefetch),
                settings,
                env,
                clock,
            )
        )
    except BaseException:
        runner.close(None)
        raise


async def _open(
    runner: "_LoopThread",
    name: str,
    sources: Sequence[str],
    revision: str,
    store: BlockStore | Path | None,
    framework: Framework,
    prefetch: tuple[str, ...],
    settings: PullSettings,
    env: Mapping[str, str] | None,
    clock: Callable[[], float],
) -> RemoteModel:
    if framework not in ("np", "pt"):
        raise BadInput(f"framework must be 'np' or 'pt', got {framework!r}")
    validate_model_name(name)
    validate_revision(revision)
    pool = SourcePool(sources, settings=settings, clock=clock)
    owns_store = not isinstance(store, BlockStore)
    block_store = (
        store
        if isinstance(store, BlockStore)
        else await asyncio.to_thread(
            open_local_store, store, env=os.environ if env is None else env, fsync=settings.fsync
        )
    )
    try:
        manifest, base = await resolve_model(pool, name, revision)
        fetcher = BlockFetcher(block_store, pool)
        files = [f for m in (base, manifest) if m is not None for f in m.files if f.kind == "safetensors"]
        headers = dict(
            zip(
                (f.path for f in files),
                await asyncio.gather(*(_header(block_store, fetcher, f) for f in files)),
                strict=True,
            )
        )
        tensors: dict[str, tuple[FileManifest, TensorInfo]] = {}
        for f in files:
            for t in headers[f.path].tensors:
                if t.name in tensors:
                    raise BadInput(
                        f"tensor {t.name!r} is in both {tensors[t.name][0].path} and {f.path}",
                        tensor=t.name,
                    )
                tensors[t.name] = (f, t)
        model = RemoteModel(
            manifest,
            base,
            tensors,
            headers,
            store=block_store,
            fetcher=fetcher,
            runner=runner,
            framework=framework,
            owns_store=owns_store,
        )
        if prefetch:
            await model._prefetch(list(prefetch))
        return model
    except BaseException:
        await pool.close()
        if owns_store:
            block_store.close()
        raise


async def _header(store: BlockStore, fetcher: BlockFetcher, f: FileManifest) -> TensorFileInfo:
    """Fetch the block(s) of a safetensors header and parse it."""
    first = min(8, f.size)
    await fetcher.ensure(ref for ref, _, _ in f.segments_in(0, first))
    prefix = bytes(await asyncio.to_thread(read_file_range, store, f, 0, first))
    n = header_length(prefix, path=f.path, file_size=f.size)
    await fetcher.ensure(ref for ref, _, _ in f.segments_in(0, 8 + n))
    raw = bytes(await asyncio.to_thread(read_file_range, store, f, 0, 8 + n))
    return parse_tensor_header(raw, path=f.path, file_size=f.size)


def _to_array(data: bytearray, t: TensorInfo, framework: Framework) -> Any:
    if framework == "pt":
        import torch

        dtype = getattr(torch, _TORCH_DTYPES[t.dtype])
        if not data:
            return torch.empty(t.shape, dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(t.shape)
    array = np.frombuffer(data, dtype=numpy_dtype(t.dtype)).reshape(t.shape)
    array.setflags(write=False)
    return array


class _LoopThread:
    """An event loop running in a daemon thread, for the synchronous mapping API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cachenet-loader", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> "Future[T]":
        """Schedule `coro` on the loop thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop thread and wait for it (must not be called from that thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a RemoteModel's blocking methods cannot run on its own loop")
        return self.submit(coro).result()

    async def wrap(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop thread and await it from another loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def close(self, last: Coroutine[Any, Any, None] | None) -> None:
        """Run `last` (cleanup), then stop the loop and join the thread."""
        if self.loop.is_closed():
            if last is not None:
                last.close()
            return
        if last is not None:
            try:
                self.submit(last).result()
            except Exception:  # noqa: BLE001 - cleanup must not hide the caller's error
                log.exception("closing the loader's HTTP session failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
