"""Two-stage text-to-image search over a large synthetic gallery: time per query and R@1 for several k, the cost of
building the gallery (in memory, and on disk with a FAISS index), and memory.

    python benchmarks/search_speed.py --model_name_or_path outputs/demo/bridge \
        [--gallery_size 10000 --num_queries 1000 --k 1,8,32,128 --exact_queries 64]

The gallery is bridge-shapes' training split at `--gallery_size` scenes (64-pixel images); the queries are the
captions of its first `--num_queries` rows. Captions repeat across scenes (one per family, binding, relation and
order), so a hit at 1 is a top image whose caption is the query's. k = all (exact fused scoring of every gallery
image) re-encodes the gallery for every batch of queries, so it runs on the first `--exact_queries` queries only, and
each k's R@1 is also reported on those queries for a like-for-like comparison. All numbers come from one process
(ratios are what carries over to another machine); results go to `--output` as JSON.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
from modeling_bridge.command_line import check_int, check_ints, check_results_file, parse_int_list
from modeling_bridge.data import load_bridge_shapes
from modeling_bridge.hub_utils import check_model_path, explain_load_error, run_command
from modeling_bridge.retrieval import GalleryItems, build_gallery, search


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def hits_at_1(indices: torch.Tensor, captions: list[str], queries: list[str]) -> list[bool]:
    return [captions[int(top)] == query for top, query in zip(indices[:, 0], queries)]


def check_arguments(args) -> None:
    """Every argument's range, before any model is loaded (`--k` becomes a sorted list of ints)."""
    check_ints(args, "gallery_size", "batch_size")
    check_int(args.num_queries, "--num_queries", maximum=args.gallery_size, maximum_is="--gallery_size")
    check_int(args.exact_queries, "--exact_queries", maximum=args.num_queries, maximum_is="--num_queries")
    args.k = sorted(parse_int_list(args.k, "--k"))
    check_model_path(args.model_name_or_path)
    check_results_file(args.output, inputs={args.model_name_or_path: "the model folder (--model_name_or_path)"})


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--gallery_size", type=int, default=10000)
    parser.add_argument("--num_queries", type=int, default=1000)
    parser.add_argument("--k", default="1,8,32,128")
    parser.add_argument("--exact_queries", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rerank", default="fused", choices=["fused", "itm"])
    parser.add_argument("--output", default="outputs/benchmarks/search_speed.json")
    args = parser.parse_args(argv)
    check_arguments(args)

    torch.manual_seed(0)
    try:
        model = AutoModel.from_pretrained(args.model_name_or_path).eval()
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    except OSError as error:
        raise explain_load_error(args.model_name_or_path, "model", error) from None
    rows, seconds_data = timed(lambda: load_bridge_shapes(num_train=args.gallery_size, seed=7)["train"])
    captions = rows["caption"]
    queries = captions[: args.num_queries]
    items = GalleryItems(rows, "image")  # decoded batch by batch, never all at once
    rss_before = peak_rss_mib()
    gallery, seconds_memory = timed(lambda: build_gallery(model, processor, images=items, batch_size=128))
    with tempfile.TemporaryDirectory() as cache:
        disk, seconds_disk = timed(
            lambda: build_gallery(model, processor, images=items, batch_size=128, cache_dir=cache, progress=False)
        )
        disk_bytes = sum(os.path.getsize(os.path.join(cache, name)) for name in os.listdir(cache))
        faiss_hits = search(model, processor, disk, queries[:64], k=8, rerank=None).indices
    build = {
        "gallery_images": len(rows),
        "seconds_generate_images": seconds_data,
        "seconds_build_in_memory": seconds_memory,
        "seconds_build_on_disk_with_faiss": seconds_disk,
        "embedding_mib": gallery.embeddings.numel() * gallery.embeddings.element_size() / 2**20,
        "disk_mib": disk_bytes / 2**20,
        "peak_rss_growth_mib": peak_rss_mib() - rss_before,
        "faiss_equals_exact_top8": bool(
            torch.equal(faiss_hits, search(model, processor, gallery, queries[:64], k=8, rerank=None).indices)
        ),
    }

    ks = args.k
    exact = args.exact_queries
    rows_out = {}
    unimodal, seconds = timed(lambda: search(model, processor, gallery, queries, k=1, rerank=None))
    hits = hits_at_1(unimodal.indices, captions, queries)
    rows_out["unimodal (k=1, no re-rank)"] = (seconds / len(queries), hits)
    for k in ks:
        found, seconds = timed(
            lambda k=k: search(
                model, processor, gallery, queries, k=k, rerank=args.rerank, batch_size=args.batch_size, progress=True
            )
        )
        rows_out[f"two-stage k={k}"] = (seconds / len(queries), hits_at_1(found.indices, captions, queries))
    found, seconds = timed(
        lambda: search(
            model,
            processor,
            gallery,
            queries[:exact],
            k=len(rows),
            rerank=args.rerank,
            batch_size=args.batch_size,
            progress=True,
        )  # fmt: skip
    )
    rows_out[f"exact (k=all={len(rows)})"] = (seconds / exact, hits_at_1(found.indices, captions, queries[:exact]))

    results = {"arguments": vars(args), "torch_threads": torch.get_num_threads(), "build": build, "search": {}}
    print(f"\n{len(queries)} text queries over {len(rows)} images ({args.rerank} re-rank)")
    print(f"{'':<30}{'ms/query':>10}{'R@1':>8}{f'R@1 first {exact}':>16}")
    for name, (per_query, hit) in rows_out.items():
        overall = sum(hit) / len(hit) if len(hit) == len(queries) else None
        first = sum(hit[:exact]) / exact
        results["search"][name] = {"seconds_per_query": per_query, "r1": overall, f"r1_first_{exact}": first}
        shown = "-" if overall is None else f"{overall:.3f}"
        print(f"{name:<30}{1000 * per_query:>10.2f}{shown:>8}{first:>16.3f}")
    print(
        f"\nbuild: in memory {build['seconds_build_in_memory']:.1f} s, on disk + FAISS "
        f"{build['seconds_build_on_disk_with_faiss']:.1f} s; embeddings {build['embedding_mib']:.1f} MiB "
        f"(disk {build['disk_mib']:.1f} MiB); peak RSS growth {build['peak_rss_growth_mib']:.0f} MiB; "
        f"FAISS top-8 == exact top-8: {build['faiss_equals_exact_top8']}"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
