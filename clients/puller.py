"""`pull`: resolve a model, fetch only the blocks the local store lacks, write its files.

A LoRA model's manifest names its base revision: the base's files are written too (the
adapter's files beside them), or, with `merge_lora`, the base's files with its weights
merged with the adapter (W + scale·B·A) and no adapter files. Each block is written once,
verified, straight into its place in the output files, which then serve as the device's
block store (`clients.fileindex`): an interrupted pull resumes where it stopped, and a
second variant of the same base hard-links the base's files and fetches only its adapter.
A merge, and a pull without output folder, keep blocks in the block store.
"""

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tqdm import tqdm

from cachenet.blockstore import BlockStore
from cachenet.errors import BadInput
from cachenet.manifest import BaseRef, BlockRef, FileManifest, ModelManifest
from cachenet.names import parse_model_ref
from cachenet.units import count, format_bytes
from clients.assemble import assemble_file
from clients.config import DEFAULT_SETTINGS, PullSettings
from clients.fetch import BlockFetcher, BlockSink
from clients.fileindex import INDEX_FILE, FileIndex, indexed_ids
from clients.localstore import open_local_store, read_file_range
from clients.merge import ADAPTER_FILES, LoraSpec, MergeOp, apply_merge, plan_merge
from clients.multicast.session import MulticastOptions, MulticastStats, fetch_with_multicast
from clients.outfiles import OutputFiles
from clients.sources import SourcePool, SourceReport
from clients.tensorfile import TensorFileInfo, TensorInfo, header_length, parse_tensor_header

__all__ = (
    "FilePlan",
    "PullReport",
    "fetch_and_write",
    "plan_files",
    "pull",
    "pull_sync",
    "read_tensor_header",
    "resolve_model",
    "write_files",
)
log = logging.getLogger(__name__)

CHECKPOINT_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class FilePlan:
    """One file to write: where it goes and the manifest entry (and model) it comes from."""

    path: str
    file: FileManifest
    model: str


@dataclass(frozen=True, slots=True)
class PullReport:
    """What a pull did: bytes fetched vs reused from the local store, per-source contributions."""

    name: str
    revision: str
    base: BaseRef | None
    out_dir: Path | None
    files: tuple[str, ...]
    total_bytes: int
    needed_bytes: int
    fetched_bytes: int
    fetched_blocks: int
    reused_bytes: int
    reused_blocks: int
    received_bytes: int
    wasted_bytes: int
    refused_blocks: int
    retries: int
    merged_tensors: int
    elapsed_s: float
    sources: tuple[SourceReport, ...]
    multicast: MulticastStats | None = None

    @property
    def sources_used(self) -> tuple[str, ...]:
        """URLs of the sources that delivered bytes."""
        return tuple(s.url for s in self.sources if s.bytes)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "name": self.name,
            "revision": self.revision,
            "base": None if self.base is None else {"name": self.base.name, "revision": self.base.revision},
            "out_dir": None if self.out_dir is None else str(self.out_dir),
            "files": list(self.files),
            "total_bytes": self.total_bytes,
            "needed_bytes": self.needed_bytes,
            "fetched_bytes": self.fetched_bytes,
            "fetched_blocks": self.fetched_blocks,
            "reused_bytes": self.reused_bytes,
            "reused_blocks": self.reused_blocks,
            "received_bytes": self.received_bytes,
            "wasted_bytes": self.wasted_bytes,
            "refused_blocks": self.refused_blocks,
            "retries": self.retries,
            "merged_tensors": self.merged_tensors,
            "elapsed_s": round(self.elapsed_s, 4),
            "sources": [s.to_json() for s in self.sources],
            "multicast": None if self.multicast is None else self.multicast.to_json(),
        }

    def summary(self) -> str:
        """One line for people."""
        rate = self.fetched_bytes / self.elapsed_s if self.elapsed_s > 0 else 0.0
        where = ", ".join(f"{s.url} {format_bytes(s.bytes)}" for s in self.sources if s.bytes) or "none"
        extra = []
        if self.refused_blocks:
            extra.append(f"{self.refused_blocks} corrupt blocks refused")
        if self.retries:
            extra.append(f"{self.retries} retries")
        if self.merged_tensors:
            extra.append(f"{self.merged_tensors} tensors merged")
        mc = self.multicast
        if mc is not None and mc.session is not None:
            extra.append(
                f"multicast {format_bytes(mc.multicast_bytes)} in session {mc.session}"
                f"{' (joined late)' if mc.late else ''}, repaired {format_bytes(mc.repair_bytes)}"
                f" (loss {mc.loss:.1%})"
            )
        elif mc is not None and mc.fallback and mc.fallback != "nothing to fetch":
            extra.append(f"no multicast: {mc.fallback}")
        target = f" into {self.out_dir}" if self.out_dir is not None else ""
        return (
            f"pulled {self.name}@{self.revision[:12]}{target}: {count(len(self.files), 'file')}, "
            f"{format_bytes(self.total_bytes)}; fetched {format_bytes(self.fetched_bytes)} "
            f"({count(self.fetched_blocks, 'block')}, {format_bytes(rate)}/s), "
            f"reused {format_bytes(self.reused_bytes)} "
            f"from the local store; {self.elapsed_s:.2f} s; sources: {where}"
            + (f"; {', '.join(extra)}" if extra else "")
        )


async def pull(
    ref: str,
    *,
    sources: Sequence[str],
    out_dir: Path | None = None,
    store: BlockStore | Path | None = None,
    merge_lora: bool = False,
    settings: PullSettings = DEFAULT_SETTINGS,
    multicast: MulticastOptions | str = "auto",
    progress: bool | None = None,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    verify_files: bool = False,
) -> PullReport:
    """Pull `NAME[@REV]` from `sources` into the local store; write its files to `out_dir`.

    Without `out_dir` the blocks are only fetched (a prefetch). `multicast` is a mode
    (auto, on, off; see `clients.multicast.session`) or full options. Raises `ModelNotFound`,
    `UpstreamUnavailable` (no source could deliver a block intact), `IntegrityError`,
    `BadInput` (bad name, `merge_lora` on a model without a base, an unmergeable
    adapter), `CapacityExceeded`.
    """
    name, revision = parse_model_ref(ref)
    started = clock()
    options = MulticastOptions(mode=multicast) if isinstance(multicast, str) else multicast
    pool = SourcePool(sources, settings=settings, clock=clock)
    block_store = _open_store(store, env, settings)
    try:
        manifest, base = await resolve_model(pool, name, revision)
        return await fetch_and_write(
            manifest,
            base,
            store=block_store,
            fetcher=BlockFetcher(block_store, pool),
            out_dir=out_dir,
            merge_lora=merge_lora,
            multicast=options,
            progress=progress,
            started=started,
            clock=clock,
            verify_files=verify_files,
        )
    finally:
        await pool.close()
        if block_store is not store:
            block_store.close()


async def resolve_model(pool: SourcePool, name: str, revision: str) -> tuple[ModelManifest, ModelManifest | None]:
    """A model's manifest and, for a LoRA model, its base's (the exact revision it names)."""
    manifest = await pool.manifest(name, revision, demand=True)
    base = await pool.manifest(manifest.base.name, manifest.base.revision) if manifest.base else None
    return manifest, base


async def fetch_and_write(
    manifest: ModelManifest,
    base: ModelManifest | None,
    *,
    store: BlockStore,
    fetcher: BlockFetcher,
    out_dir: Path | None,
    merge_lora: bool = False,
    multicast: MulticastOptions | None = None,
    progress: bool | None = None,
    started: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    verify_files: bool = False,
) -> PullReport:
    """Fetch the blocks of a model's files the device lacks (by multicast where it helps) and write the files.

    With `out_dir` (and no merge) every block goes straight into its place in the output
    files (`clients.outfiles`); without, into the block store (a prefetch).
    """
    started = clock() if started is None else started
    settings = fetcher.pool.settings
    if merge_lora and base is None:
        raise BadInput(
            f"{manifest.name} has no base model: --merge-lora applies to LoRA adapters only",
            model=manifest.name,
        )
    plans = plan_files(manifest, base, merge_lora=merge_lora)
    needed: dict[str, BlockRef] = {}
    for f in [p.file for p in plans] + (list(manifest.files) if merge_lora else []):
        for block in f.blocks:
            needed.setdefault(block.block_id, block)
    outputs: OutputFiles | None = None
    lazy: _LazyOutputs | None = None
    if out_dir is not None and not merge_lora:
        lazy = _LazyOutputs(store, plans, Path(out_dir), settings.fsync)
        if multicast is None or multicast.mode == "off":
            outputs = await lazy.get()
            missing = list(outputs.needed().values())
        else:
            # Devices joining one multicast batch must not wait for their files to open first.
            # (opened when the first block is to be written: 8 devices opening files in one test
            # process would hold the GIL through the batching window).
            index_path = store.root / INDEX_FILE
            known = await asyncio.to_thread(indexed_ids, index_path, needed) if index_path.exists() else set()
            missing = [b for b in needed.values() if not store.has(b.block_id) and b.block_id not in known]
    else:
        missing = [b for b in needed.values() if not store.has(b.block_id)]
    missing_bytes = sum(b.size for b in missing)
    before = fetcher.stats()
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(
        total=missing_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=manifest.name,
        disable=not show or not missing,
        leave=False,
    ) as bar:
        previous, fetcher.progress = fetcher.progress, bar.update
        sink = fetcher.sink
        checkpoints = None
        try:
            if lazy is not None:
                fetcher.ready = lazy.sink
                checkpoints = asyncio.create_task(_checkpoints(lazy))
            mc = await fetch_with_multicast(
                missing,
                manifest=manifest,
                fetcher=fetcher,
                options=multicast or MulticastOptions(mode="off"),
                progress=bar.update,
            )
            if lazy is not None:
                outputs = await lazy.get()
                await asyncio.to_thread(outputs.copy_from_store, store)
                # Blocks the index named but whose bytes no longer verify (an edited output).
                await fetcher.ensure(list(outputs.needed().values()))
                await asyncio.to_thread(outputs.finish, verify_files=verify_files)
        finally:
            fetcher.progress, fetcher.sink, fetcher.ready = previous, sink, None
            if checkpoints is not None:
                checkpoints.cancel()
            if lazy is not None and lazy.task is not None:
                opened = await asyncio.gather(lazy.task, return_exceptions=True)
                if isinstance(opened[0], OutputFiles):
                    await asyncio.to_thread(opened[0].close)
                    opened[0].index.close()
    merged = 0
    if out_dir is not None and lazy is None:
        merged = await write_files(
            store, plans, Path(out_dir), settings=settings, adapter=manifest if merge_lora else None
        )
    after = fetcher.stats()
    needed_bytes = sum(b.size for b in needed.values())
    fetched_bytes = after.fetched_bytes - before.fetched_bytes + mc.stored_bytes
    fetched_blocks = after.fetched_blocks - before.fetched_blocks + mc.multicast_blocks + mc.repaired_blocks
    report = PullReport(
        name=manifest.name,
        revision=manifest.revision,
        base=manifest.base,
        out_dir=None if out_dir is None else Path(out_dir),
        files=tuple(p.path for p in plans),
        total_bytes=sum(p.file.size for p in plans),
        needed_bytes=needed_bytes,
        fetched_bytes=fetched_bytes,
        fetched_blocks=fetched_blocks,
        # In place, what was not fetched came from the device (an estimate made before the
        # output files were open may have named blocks whose bytes no longer verify).
        reused_bytes=needed_bytes - (fetched_bytes if lazy is not None else missing_bytes),
        reused_blocks=len(needed) - (fetched_blocks if lazy is not None else len(missing)),
        received_bytes=after.received_bytes - before.received_bytes + mc.multicast_bytes + mc.repair_bytes,
        wasted_bytes=after.wasted_bytes - before.wasted_bytes,
        refused_blocks=after.refused_blocks - before.refused_blocks,
        retries=after.retries - before.retries,
        merged_tensors=merged,
        elapsed_s=clock() - started,
        sources=fetcher.pool.reports(),
        multicast=mc,
    )
    log.info("%s", report.summary())
    return report


def _open_outputs(store: BlockStore, plans: Sequence[FilePlan], out_dir: Path, fsync: bool) -> OutputFiles:
    """The pull's output files, with what the device already has in place (blocking)."""
    index = FileIndex(store.root / INDEX_FILE, fsync=fsync)
    outputs = OutputFiles(out_dir, [p.file for p in plans], index, fsync=fsync)
    try:
        outputs.open()
        outputs.place_local(store)
    except BaseException:
        outputs.close()
        index.close()
        raise
    return outputs


class _LazyOutputs:
    """The pull's output files, opened (in a thread) on first use."""

    def __init__(self, store: BlockStore, plans: Sequence[FilePlan], out_dir: Path, fsync: bool) -> None:
        self._args = (store, plans, out_dir, fsync)
        self.task: asyncio.Future[OutputFiles] | None = None

    def get(self) -> "asyncio.Future[OutputFiles]":
        if self.task is None:
            self.task = asyncio.ensure_future(asyncio.to_thread(_open_outputs, *self._args))
        return self.task

    async def sink(self) -> BlockSink:
        return await self.get()


async def _checkpoints(lazy: _LazyOutputs) -> None:
    """Record the blocks placed so far once a second, so a killed pull resumes from them."""
    while True:
        await asyncio.sleep(CHECKPOINT_S)
        task = lazy.task
        if task is None or not task.done():
            continue
        if task.cancelled() or task.exception() is not None:
            return
        await asyncio.to_thread(task.result().checkpoint)


def pull_sync(ref: str, **options: Any) -> PullReport:
    """`pull` for code without an event loop (runs one)."""
    return asyncio.run(pull(ref, **options))


def plan_files(manifest: ModelManifest, base: ModelManifest | None, *, merge_lora: bool = False) -> list[FilePlan]:
    """The files a pull writes: the model's, plus its base's (merged: the base's only)."""
    if base is None:
        return [FilePlan(f.path, f, manifest.name) for f in manifest.files]
    out = {f.path: FilePlan(f.path, f, base.name) for f in base.files}
    if not merge_lora:
        # The model asked for wins a clash (an adapter's README over the base's).
        out.update({f.path: FilePlan(f.path, f, manifest.name) for f in manifest.files})
    return [out[p] for p in sorted(out)]


async def write_files(
    store: BlockStore,
    plans: Sequence[FilePlan],
    out_dir: Path,
    *,
    settings: PullSettings = DEFAULT_SETTINGS,
    adapter: ModelManifest | None = None,
) -> int:
    """Assemble the planned files into `out_dir`, merging `adapter` in; returns tensors merged."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ops_by_file: dict[str, list[MergeOp]] = {}
    read_adapter = None
    if adapter is not None:
        ops, read_adapter = await asyncio.to_thread(_merge_plan, store, adapter, plans)
        for op in ops:
            ops_by_file.setdefault(op.base_file, []).append(op)
    slots = asyncio.Semaphore(settings.assemble_threads)

    async def one(plan: FilePlan) -> None:
        ops = ops_by_file.get(plan.path)
        patch = None
        if ops and read_adapter is not None:
            reader = read_adapter

            def patch(fd: int, ops: list[MergeOp] = ops) -> None:
                apply_merge(fd, ops, reader)

        async with slots:
            await asyncio.to_thread(
                assemble_file,
                store,
                plan.file,
                out_dir / plan.path,
                fsync=settings.fsync,
                patch=patch,
            )

    # Largest first, so the longest assembly does not start last.
    await asyncio.gather(*(one(p) for p in sorted(plans, key=lambda p: -p.file.size)))
    return sum(len(v) for v in ops_by_file.values())


def read_tensor_header(store: BlockStore, f: FileManifest) -> TensorFileInfo:
    """Parse a stored safetensors file's header (blocking)."""
    prefix = bytes(read_file_range(store, f, 0, min(8, f.size)))
    n = header_length(prefix, path=f.path, file_size=f.size)
    return parse_tensor_header(bytes(read_file_range(store, f, 0, 8 + n)), path=f.path, file_size=f.size)


def _merge_plan(
    store: BlockStore, adapter: ModelManifest, plans: Sequence[FilePlan]
) -> tuple[list[MergeOp], Callable[[TensorInfo], bytearray]]:
    weights = [f for f in adapter.files if f.path.rsplit("/", 1)[-1] == "adapter_model.safetensors"]
    if len(weights) != 1:
        names = sorted(f.path for f in adapter.files if f.path.rsplit("/", 1)[-1] in ADAPTER_FILES)
        raise BadInput(
            f"{adapter.name}: a merge needs exactly one adapter_model.safetensors, found {names}",
            model=adapter.name,
        )
    weights_file = weights[0]
    config = next((f for f in adapter.files if f.path.rsplit("/", 1)[-1] == "adapter_config.json"), None)
    config_bytes = bytes(read_file_range(store, config, 0, config.size)) if config is not None else None
    spec = LoraSpec.from_json_bytes(config_bytes, adapter.metadata.get("lora"))
    adapter_info = read_tensor_header(store, weights_file)
    bases = [read_tensor_header(store, p.file) for p in plans if p.file.kind == "safetensors"]
    ops = plan_merge(adapter_info, bases, spec)
    if not any(op.a is not None for op in ops):
        raise BadInput(f"{adapter.name}: the adapter has no lora_A/lora_B weights to merge", model=adapter.name)

    def read(t: TensorInfo) -> bytearray:
        return read_file_range(store, weights_file, t.start, t.end)

    return ops, read


def _open_store(store: BlockStore | Path | None, env: Mapping[str, str] | None, settings: PullSettings) -> BlockStore:
    if isinstance(store, BlockStore):
        return store
    return open_local_store(store, env=os.environ if env is None else env, fsync=settings.fsync)
