"""Evaluate a saved BRIDGE on image-text retrieval, both directions: unimodal (bi-encoder) scores, exact fused scoring
of every pair, and two-stage search (unimodal top-k re-ranked by the fused or ITM score) at several k.

    python examples/run_retrieval_eval.py --model_name_or_path outputs/demo/bridge [--dataset bridge-shapes] \
        [--k 1,8,32] [--rerank fused] [--output_dir outputs/retrieval]

Rows are (image, caption) pairs and each query's match is its own row's partner: text->image searches the rows'
images with each caption, image->text the rows' captions with each image. Data: the held-out split of
bridge-shapes (default), or a `datasets` folder / Karpathy JSON (`--dataset`, `--image_root`, `--split`) with one
caption per image. Metrics (recall@1/5/10, mean and median rank) come from the local `evaluate` module
`metrics/bridge_retrieval` (loaded by path). Prints a table and writes `retrieval_results.json`, and for the first
`--num_figures` pairs `figures/words_<i>.png` (where each word of caption i looks in image i) and
`figures/search_t2i_<i>.png` / `search_i2t_<i>.png` (the top 5 of each direction with their scores); wrong input ends
the run with one `error: ...` line.
"""

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import evaluate
from transformers import AutoModel, AutoProcessor, HfArgumentParser

import modeling_bridge  # noqa: F401  (registers BRIDGE with the Auto classes)
from modeling_bridge.command_line import check_int, check_ints, check_results_folder, parse_int_list
from modeling_bridge.data import load_bridge_shapes, load_image_text_dataset
from modeling_bridge.hub_utils import check_model_path, explain_load_error, run_command
from modeling_bridge.retrieval import build_gallery, search
from modeling_bridge.saving import write_json_atomically
from modeling_bridge.visualization import save_search_figure, save_word_attention_figure, word_attention_maps


METRIC_PATH = str(Path(__file__).resolve().parents[1] / "metrics" / "bridge_retrieval")


@dataclass
class RetrievalArguments:
    model_name_or_path: str = field(metadata={"help": "A saved BRIDGE folder (e.g. outputs/demo/bridge)."})
    dataset: str = field(default="bridge-shapes", metadata={"help": "bridge-shapes, a datasets folder or a JSON."})
    image_root: str | None = field(default=None, metadata={"help": "Image folder of a Karpathy JSON."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N pairs only."})
    k: str = field(default="1,8,32", metadata={"help": "Comma-separated candidate counts of the two-stage search."})
    rerank: str = field(
        default="fused", metadata={"help": "Re-ranking score: fused or itm.", "choices": ["fused", "itm"]}
    )
    batch_size: int = field(default=32, metadata={"help": "Queries / gallery items per batch."})
    num_figures: int = field(
        default=3, metadata={"help": "Pairs drawn as figures: per-word attention maps and top-5 search results."}
    )
    output_dir: str = field(default="outputs/retrieval", metadata={"help": "Where retrieval_results.json goes."})


def load_pairs(args: RetrievalArguments):
    if args.dataset == "bridge-shapes":
        if args.split not in ("train", "test"):
            raise ValueError(f"bridge-shapes has the splits ['train', 'test']; got --split {args.split}.")
        rows = load_bridge_shapes(num_train=200)[args.split]
    else:
        data = load_image_text_dataset(args.dataset, image_root=args.image_root)
        if hasattr(data, "keys"):
            if args.split not in data:
                raise ValueError(f"no split {args.split!r} in {args.dataset}; it has {list(data)}.")
            data = data[args.split]
        rows = data
    if args.max_samples is not None:
        rows = rows.select(range(min(args.max_samples, len(rows))))
    if len(rows) < 2:
        raise ValueError(f"{args.dataset} ({args.split}) has {len(rows)} pair(s); retrieval needs at least 2.")
    return list(rows["image"]), list(rows["caption"])


def parse_ks(text: str, size: int) -> list[int]:
    return sorted({min(k, size) for k in parse_int_list(text, "--k")})


def evaluate_direction(model, processor, metric, gallery, queries, ks, args) -> dict[str, dict]:
    """Unimodal, two-stage at each k and exact fused (k = all), for one direction: metrics and seconds per query.
    A two-stage ranking is the re-ranked top k followed by the rest of the unimodal ranking (what a search returns
    beyond its re-ranked head), so recall@n beyond k and the ranks are defined."""
    size, results = len(gallery), {}
    targets = list(range(len(queries)))
    started = time.perf_counter()
    unimodal = search(model, processor, gallery, queries, k=size, rerank=None, batch_size=args.batch_size)
    seconds = {"unimodal": time.perf_counter() - started}
    rankings = {"unimodal": unimodal.indices.tolist()}
    for name, k in [*((f"two-stage k={k}", k) for k in ks if k < size), (f"exact {args.rerank} (all pairs)", size)]:
        started = time.perf_counter()
        head = search(
            model, processor, gallery, queries, k=k, rerank=args.rerank, batch_size=args.batch_size, progress=True
        ).indices.tolist()
        seconds[name] = time.perf_counter() - started
        rankings[name] = [
            top + [i for i in full if i not in set(top)] for top, full in zip(head, rankings["unimodal"])
        ]
    for name, ranking in rankings.items():
        scores = metric.compute(predictions=ranking, references=targets, gallery_size=size)
        results[name] = {**scores, "seconds_per_query": seconds[name] / len(queries)}
    return results


def write_figures(model, processor, image_gallery, text_gallery, images, captions, args) -> None:
    """What the fused model sees, for the first `num_figures` pairs: each caption word's attention over its image,
    and the top 5 of a search in each direction (re-ranked score, unimodal score, the true match marked)."""
    count = min(args.num_figures, len(images))
    if count <= 0:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("figures skipped: matplotlib is not installed (pip install matplotlib)")
        return
    folder = os.path.join(args.output_dir, "figures")
    os.makedirs(folder, exist_ok=True)
    k = min(5, len(images))
    for i in range(count):
        attention = word_attention_maps(model, processor, images[i], captions[i])
        save_word_attention_figure(images[i], attention, os.path.join(folder, f"words_{i}.png"), title=captions[i])
        for name, gallery, query, items in (
            ("t2i", image_gallery, captions[i], images),
            ("i2t", text_gallery, images[i], captions),
        ):
            found = search(model, processor, gallery, [query], k=k, rerank=args.rerank)
            indices = found.indices[0].tolist()
            save_search_figure(
                query,
                [items[j] for j in indices],
                found.scores[0],
                os.path.join(folder, f"search_{name}_{i}.png"),
                unimodal_scores=found.unimodal_scores[0],
                target=indices.index(i) if i in indices else None,
            )
    print(f"wrote {3 * count} figures to {folder}")


def check_arguments(args: RetrievalArguments) -> None:
    """Everything that can be wrong in the arguments, before any model or data is loaded."""
    check_int(args.max_samples, "--max_samples", minimum=2, optional=True)  # retrieval needs 2 pairs
    check_ints(args, "batch_size")
    check_int(args.num_figures, "--num_figures", minimum=0)
    parse_int_list(args.k, "--k")
    check_model_path(args.model_name_or_path)
    check_results_folder(args.output_dir, inputs={args.model_name_or_path: "the model folder (--model_name_or_path)"})


def main(argv=None):
    (args,) = HfArgumentParser(RetrievalArguments).parse_args_into_dataclasses(args=argv)
    check_arguments(args)
    images, captions = load_pairs(args)
    ks = parse_ks(args.k, len(images))
    try:
        model = AutoModel.from_pretrained(args.model_name_or_path).eval()
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    except OSError as error:
        raise explain_load_error(args.model_name_or_path, "model", error) from None
    metric = evaluate.load(METRIC_PATH)
    image_gallery = build_gallery(model, processor, images=images, batch_size=args.batch_size)
    text_gallery = build_gallery(model, processor, texts=captions, batch_size=args.batch_size)
    results = {
        "text_to_image": evaluate_direction(model, processor, metric, image_gallery, captions, ks, args),
        "image_to_text": evaluate_direction(model, processor, metric, text_gallery, images, ks, args),
    }
    print(f"\n{args.model_name_or_path} on {args.dataset} ({args.split}): {len(images)} pairs")
    for direction, rows in results.items():
        print(f"\n{direction:<28}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'mean rank':>11}{'median':>8}{'ms/query':>10}")
        for name, row in rows.items():
            print(
                f"{name:<28}{row['r1']:>8.3f}{row['r5']:>8.3f}{row['r10']:>8.3f}{row['mean_rank']:>11.2f}"
                f"{row['median_rank']:>8.1f}{1000 * row['seconds_per_query']:>10.2f}"
            )
    os.makedirs(args.output_dir, exist_ok=True)
    write_figures(model, processor, image_gallery, text_gallery, images, captions, args)
    path = os.path.join(args.output_dir, "retrieval_results.json")
    write_json_atomically(path, {"arguments": asdict(args), "num_pairs": len(images), **results})
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
