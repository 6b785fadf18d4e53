"""Resident memory of the memory index (issue 15, item 7): bytes per memory, built and at rest.

Each measurement runs in a fresh Python process (RSS is a whole-process figure), which imports
``HnswIndex`` from a given ``index.py`` (this tree's, or another commit's: ``--baseline REF``
takes ``gateway/memory/index.py`` at that git revision) and reads VmRSS from /proc/self/status:

* **build**: adds ``--count`` vectors of ``--ndim`` dimensions to one namespace in batches of 256
  (the pipeline's embedding batch), interleaved with the garbage the ingest pipeline makes (2,000-
  character chunk texts, metadata dicts, embeddings as tuples of floats, about 10 batches alive at
  a time, as in its bounded queues), then frees that garbage and collects; the figure is RSS above
  the process before the build, per memory. ``--no-garbage`` builds alone.
* **at rest**: a fresh process loads the index the build saved: RSS above that process before
  the load, per memory. The difference between the two is what building left behind
  (fragmentation, free lists).
* with ``--tracemalloc``, the build also reports the Python heap the index holds after it
  (tracemalloc's current size, the garbage freed), per memory.

Run: python benchmarks/index_memory.py [--count 300000] [--ndim 64] [--dtype f32]
     [--baseline 82af39f]   (a minute or two per configuration)
"""

from __future__ import annotations

import argparse
import collections
import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256
LIVE_BATCHES = 10  # (2 x queue_batches + embed_concurrency) batches alive in the pipeline


def rss_now() -> int:
    """This process's VmRSS in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def load_module(path: Path) -> ModuleType:
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("measured_index", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["measured_index"] = module
    spec.loader.exec_module(module)
    return module


def pipeline_batch(rng: Any, seq: int, ndim: int) -> list[tuple[str, dict[str, Any], str, tuple[float, ...]]]:
    """What the pipeline holds for one batch: text, metadata, id and embedding per chunk."""
    vectors = rng.standard_normal((BATCH, ndim)).astype("float32")
    batch = []
    for i, vector in enumerate(vectors.tolist()):
        index = seq * BATCH + i
        text = f"chunk {index} " + "the gateway routes each request to a healthy deployment " * 35
        meta = {
            "file": "text-500.txt",
            "job_id": "job_0123456789abcdef01234567",
            "offset": index * 1800,
            "chunk_index": index,
        }
        batch.append((text, meta, f"ing_0123456789abcdef01234567_{index}", tuple(vector)))
    return batch


def build(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    module = load_module(Path(args.module))
    directory = Path(args.directory)
    rng = np.random.default_rng(7)
    warm = module.HnswIndex(directory / "warm", dtype=args.dtype)
    warm.add("warm", [("w", [1.0] * args.ndim)])  # usearch's and numpy's own first-use costs
    del warm
    gc.collect()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    before = rss_now()
    index = module.HnswIndex(directory, dtype=args.dtype)
    live: collections.deque[Any] = collections.deque(maxlen=LIVE_BATCHES)
    started = time.monotonic()
    for seq in range(args.count // BATCH):
        batch = pipeline_batch(rng, seq, args.ndim) if args.garbage else None
        if batch is None:
            vectors = rng.standard_normal((BATCH, args.ndim)).astype("float32")
            items = [(f"ing_0123456789abcdef01234567_{seq * BATCH + i}", v) for i, v in enumerate(vectors)]
        else:
            items = [(memory_id, vector) for _, _, memory_id, vector in batch]
            live.append(batch)
        index.add("bench", items)
        del items, batch
    seconds = time.monotonic() - started
    live.clear()
    gc.collect()
    after = rss_now()
    traced = 0
    if args.tracemalloc:
        import tracemalloc

        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    count = len(index)
    index.save()
    return {"count": count, "built_bytes": after - before, "traced_bytes": traced, "seconds": seconds}


def at_rest(args: argparse.Namespace) -> dict[str, Any]:
    module = load_module(Path(args.module))
    warm = module.HnswIndex(Path(args.directory) / "warm", dtype=args.dtype)
    warm.add("warm", [("w", [1.0] * args.ndim)])
    del warm
    gc.collect()
    before = rss_now()
    index = module.HnswIndex(args.directory, dtype=args.dtype)
    assert index.load(), "the saved index did not load"
    gc.collect()
    return {"count": len(index), "rest_bytes": rss_now() - before}


def measure(
    module: Path, count: int, ndim: int, dtype: str, *, garbage: bool = True, traced: bool = False
) -> dict[str, Any]:
    """Build then load, each in a fresh process; figures per memory in bytes."""
    with tempfile.TemporaryDirectory(prefix="index-memory-") as directory:
        common = [
            "--module",
            str(module),
            "--directory",
            directory,
            "--count",
            str(count),
            "--ndim",
            str(ndim),
            "--dtype",
            dtype,
        ]

        def child(mode: str, *extra: str) -> dict[str, Any]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, *common, *extra],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result: dict[str, Any] = json.loads(out.splitlines()[-1])
            return result

        built = child("build", *([] if garbage else ["--no-garbage"]), *(["--tracemalloc"] if traced else []))
        rest = child("rest")
    n = built["count"]
    return {
        "count": n,
        "built_per_memory": built["built_bytes"] / n,
        "rest_per_memory": rest["rest_bytes"] / n,
        "traced_per_memory": built["traced_bytes"] / n,
        "build_s": built["seconds"],
    }


def baseline_module(ref: str, directory: Path) -> Path:
    """``gateway/memory/index.py`` at git revision ``ref``, written to ``directory``."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:gateway/memory/index.py"], check=True, capture_output=True
    ).stdout
    path = directory / f"index_{ref}.py"
    path.write_bytes(source)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument("--ndim", type=int, default=64)
    parser.add_argument("--dtype", default="f32")
    parser.add_argument("--baseline", help="also measure index.py at this git revision")
    parser.add_argument("--no-garbage", dest="garbage", action="store_false")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--child", choices=("build", "rest"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--module", default=str(ROOT / "gateway" / "memory" / "index.py"), help=argparse.SUPPRESS
    )
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(build(args) if args.child == "build" else at_rest(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        modules = {"this tree": Path(args.module)}
        if args.baseline:
            modules[args.baseline] = baseline_module(args.baseline, Path(tmp))
        for name, module in modules.items():
            r = measure(
                module, args.count, args.ndim, args.dtype, garbage=args.garbage, traced=args.tracemalloc
            )
            print(
                f"{name}: {r['count']} x {args.ndim} {args.dtype}: built {r['built_per_memory']:.0f} B/memory"
                f"{' (with pipeline garbage)' if args.garbage else ''}, at rest {r['rest_per_memory']:.0f}"
                + (f", Python heap {r['traced_per_memory']:.0f}" if args.tracemalloc else "")
                + f", build {r['build_s']:.1f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
