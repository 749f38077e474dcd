"""Measure webdataset against LitData as the shard library for vitlab's packed sets (docs/data.md).

On the same N generated JPEGs (~256 px, quality 90, 10 classes), in interleaved rounds (docs/performance.md):
packing time (``webdataset.ShardWriter`` vs ``litdata.optimize`` with one worker, same shard size); random
access over a seeded permutation of all indices, bytes only (tar + ``os.pread`` at offsets from a ``tarfile``
index vs ``litdata.StreamingDataset[i]``, with its defaults and with ``batch_decode=False``); sequential
iteration (``webdataset.WebDataset`` vs ``StreamingDataset``); each read warm and cold (after writing 3 to
/proc/sys/vm/drop_caches: needs root, skipped otherwise, checked with fincore where present). Then the
packages each library adds beside torch + torchvision (installed metadata), and whether ``tarfile`` and
timm's ``wds`` reader read the tar shards. Medians (min-max) over rounds; ratios within a round.
Not run in tests; a few minutes on 2 cores. From the repository root:

    .venv/bin/python scripts/compare_shard_libraries.py --images 3000 --rounds 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path

import litdata
import numpy as np
import webdataset as wds
from packaging.requirements import Requirement
from PIL import Image, ImageDraw

LD_ONE_QUIET_WORKER = {"num_workers": 1, "verbose": False}
Setup = Callable[[], Callable[[], object]]  # untimed preparation returning the timed run


def make_images(root: Path, n: int, size: int = 256, classes: int = 10) -> list[tuple[str, int]]:
    """Write n smooth-gradient-plus-shapes JPEGs (compress like photos, unlike noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    items = []
    for i in range(n):
        label = i % classes
        c = rng.uniform(0, 255, (3, 3))
        img = np.stack([c[k, 0] + (c[k, 1] - c[k, 0]) * xx + (c[k, 2] - c[k, 0]) * yy for k in range(3)], -1)
        img += rng.normal(0, 6, img.shape)  # sensor-like grain
        pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.integers(0, size - 40, 2)
            box = (int(x0), int(y0), int(x0 + rng.integers(20, 120)), int(y0 + rng.integers(20, 120)))
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        path = root / f"class_{label}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pil.save(path, quality=90)
        items.append((str(path), label))
    return items


def pack_wds(items: list[tuple[str, int]], out: Path, shard_bytes: int) -> None:
    """Original bytes as <key>.jpg and the label as ASCII in <key>.cls (the format vitlab writes)."""
    out.mkdir(parents=True)
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxsize=shard_bytes, maxcount=10**9, verbose=0) as sink:
        for i, (path, label) in enumerate(items):
            sink.write({"__key__": f"{i:06d}", "jpg": Path(path).read_bytes(), "cls": str(label).encode()})


def _ld_item(item: tuple[str, int]) -> dict:
    """litdata.optimize's per-sample function; top level so its worker process can import it."""
    return {"image": Path(item[0]).read_bytes(), "label": item[1]}


def pack_litdata(items: list[tuple[str, int]], out: Path, shard_bytes: int) -> None:
    litdata.optimize(fn=_ld_item, inputs=items, output_dir=str(out), chunk_bytes=shard_bytes, **LD_ONE_QUIET_WORKER)


def wds_index(out: Path) -> list[tuple[str, int, int]]:
    """(shard, byte offset, size) of every image, built once from tar member offsets."""
    index = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            index += [(str(shard), m.offset_data, m.size) for m in tf.getmembers() if m.name.endswith(".jpg")]
    return index


def read_wds_random(index: list[tuple[str, int, int]], order: np.ndarray) -> int:
    fds = {shard: os.open(shard, os.O_RDONLY) for shard, _, _ in index}  # closed when the child exits
    return sum(len(os.pread(fds[index[i][0]], index[i][2], index[i][1])) for i in order)


def read_litdata_random(ds: litdata.StreamingDataset, order: np.ndarray) -> int:
    return sum(len(ds[int(i)]["image"]) for i in order)


def ld_random(out: Path, order: np.ndarray, batch_decode: bool | str) -> Callable[[], int]:
    """Open a StreamingDataset (untimed setup) and return the timed random read over it."""
    return partial(read_litdata_random, litdata.StreamingDataset(str(out), batch_decode=batch_decode), order)


def read_wds_stream(out: Path) -> int:
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    return sum(len(s["jpg"]) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def read_litdata_stream(out: Path) -> int:
    return sum(len(s["image"]) for s in litdata.StreamingDataset(str(out)))


def drop_caches() -> bool:
    """Empty the page cache so the next read comes from disk; False where not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def resident_mb(folder: Path) -> float | None:
    """MB of a folder's files in the page cache (util-linux fincore); None where fincore is missing."""
    if shutil.which("fincore") is None:
        return None
    cmd = ["fincore", "--bytes", "--noheadings", "-o", "RES", *map(str, folder.iterdir())]
    out = subprocess.run(cmd, capture_output=True, text=True)
    return sum(int(v) for v in out.stdout.split()) / 1e6


def _child(setup: Setup, send: Connection) -> None:
    run = setup()  # untimed: opening a StreamingDataset, as building the offset index is
    send.send(timed(run))


def timed_in_child(setup: Setup) -> float:
    """Set up and time one read in a forked child. A StreamingDataset keeps its chunks mapped after
    use (seen with fincore), and drop_caches cannot evict mapped pages; a child's maps end with it."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(setup, send))
    child.start()
    elapsed = recv.recv()
    child.join()
    return elapsed


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def closure(names: list[str]) -> set[str]:
    """Installed distributions reachable from names through unconditional Requires-Dist."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for req in map(Requirement, metadata.requires(name) or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def size_mb(name: str) -> float:
    files = metadata.distribution(name).files or []
    return sum(f.locate().stat().st_size for f in files if f.locate().is_file()) / 1e6


def footprint() -> list[str]:
    base = closure(["torch", "torchvision"])
    vitlab = closure(["torch", "torchvision", "pytorch-lightning", "timm", "hydra-core"])  # vitlab's core
    lines = ["| library | adds to torch + torchvision | MB on disk | of which new beside vitlab's core |"]
    lines.append("|---|---|---|---|")
    for lib in ("webdataset", "litdata"):
        extra = sorted(closure([lib]) - base)
        new = sorted(set(extra) - vitlab)
        mb, new_mb = sum(size_mb(n) for n in extra), sum(size_mb(n) for n in new)
        lines.append(
            f"| {lib} {metadata.version(lib)} | {len(extra)}: {', '.join(extra)} | {mb:.1f} | "
            f"{len(new)}, {new_mb:.1f} MB: {', '.join(new)} |"
        )
    return lines


def openness(out: Path, n: int) -> list[str]:
    shards = sorted(out.glob("*.tar"))
    with tarfile.open(shards[0]) as tf:
        lines = [f"- `tarfile` lists `{shards[0].name}`: {tf.getnames()[:2]} ...; .cls holds ASCII digits."]
    try:
        from timm.data.readers.reader_wds import ReaderWds

        split = f"train-{{000000..{len(shards) - 1:06d}}}.tar"
        reader = ReaderWds(str(out), split=split, num_samples=n, input_key="jpg")
        first = next(iter(reader))
        lines.append(f"- timm `ReaderWds` on the shards: first sample {type(first[0]).__name__}, label {first[1]}.")
    except Exception as err:  # report, do not hide, what timm makes of the shards
        lines.append(f"- timm `ReaderWds` failed: {err!r}")
    return lines


def summary(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in os.popen("lscpu") if ln.startswith("Model name")), "?")
    return (
        f"Machine: {model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; "
        f"Python {platform.python_version()}, webdataset {wds.__version__}, litdata {litdata.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shard-mb", type=float, default=16.0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh folder under /tmp")
    args = parser.parse_args()
    head, work = machine(), Path(tempfile.mkdtemp(prefix="shardcmp-", dir=args.workdir))
    items = make_images(work / "images", args.images)
    raw_mb, shard_bytes = sum(os.path.getsize(p) for p, _ in items) / 1e6, int(args.shard_mb * 1e6)
    cold_ok = drop_caches()
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    def pair(key: str, setup_wds: Setup, setup_ld: Setup, cold: bool) -> None:
        """Time webdataset then LitData (one round); per-sample figures become samples/s."""
        times = []
        for folder, setup in ((wdir, setup_wds), (ldir, setup_ld)):
            if cold:
                drop_caches()
                left = resident_mb(folder)
                if left:
                    raise RuntimeError(f"{left:.1f} MB of {folder} still cached after drop_caches")
            else:  # both sets in the page cache, whichever runs first
                timed_in_child(w_stream), timed_in_child(l_stream)
            times.append(timed_in_child(setup))
        rate = key.endswith("samples/s")
        add(f"{key}|wds", args.images / times[0] if rate else times[0])
        add(f"{key}|ld", args.images / times[1] if rate else times[1])
        add(f"{key}|ratio", times[1] / times[0])

    for r in range(args.rounds):
        wdir, ldir = work / f"wds{r}", work / f"ld{r}"
        t_w = timed(partial(pack_wds, items, wdir, shard_bytes))
        t_l = timed(partial(pack_litdata, items, ldir, shard_bytes))
        add("pack s|wds", t_w), add("pack s|ld", t_l), add("pack s|ratio", t_l / t_w)
        t_index, index = time.perf_counter(), wds_index(wdir)
        add("build offset index s|wds", time.perf_counter() - t_index)
        with open(index[7][0], "rb") as f:  # the offset index points at the original bytes
            assert os.pread(f.fileno(), index[7][2], index[7][1]) == Path(items[7][0]).read_bytes()
        order = np.random.default_rng(r).permutation(args.images)
        w_random = partial(partial, read_wds_random, index, order)
        w_stream, l_stream = partial(partial, read_wds_stream, wdir), partial(partial, read_litdata_stream, ldir)
        # LitData's default batch_decode deserialises a window of neighbours on each access, which a
        # random order wastes; batch_decode=False is its setting for random access.
        pair("random warm, LitData defaults samples/s", w_random, partial(ld_random, ldir, order, "auto"), False)
        for cache in ("warm", "cold") if cold_ok else ("warm",):
            l_random = partial(ld_random, ldir, order, False)
            pair(f"random {cache}, batch_decode=False samples/s", w_random, l_random, cache == "cold")
            pair(f"stream {cache} samples/s", w_stream, l_stream, cache == "cold")
        w_mb, l_mb = (sum(p.stat().st_size for p in d.iterdir()) / 1e6 for d in (wdir, ldir))
        shards = (len(list(wdir.glob("*.tar"))), len(list(ldir.glob("*.bin"))))
        if r < args.rounds - 1:
            shutil.rmtree(wdir), shutil.rmtree(ldir)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    print(f"\n{head}; load average {os.getloadavg()[0]:.1f} at the end")
    print(
        f"{args.images} JPEGs, {raw_mb:.1f} MB; shards of {args.shard_mb:g} MB: webdataset {shards[0]} tar "
        f"({w_mb:.1f} MB), LitData {shards[1]} chunks ({l_mb:.1f} MB); {args.rounds} rounds"
        + ("" if cold_ok else "; cold cache not measured (cannot write /proc/sys/vm/drop_caches)")
    )
    print("\n| measure | webdataset | LitData | LitData time / webdataset time |\n|---|---|---|---|")
    for key in dict.fromkeys(k.split("|")[0] for k in rows):
        ld, ratio = rows.get(f"{key}|ld"), rows.get(f"{key}|ratio")
        print(
            f"| {key} | {summary(rows[key + '|wds'])} | {summary(ld) if ld else '—'} | "
            f"{summary(ratio, 2) if ratio else '—'} |"
        )
    print("\n" + "\n".join(footprint()) + "\n\n" + "\n".join(openness(work / f"wds{args.rounds - 1}", args.images)))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
