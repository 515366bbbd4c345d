"""Two-stage search: unimodal top-k, re-ranked by the pairs' fused / ITM scores; exact and FAISS stage 1."""

import json

import pytest
import torch

from conftest import make_model, random_images
from modeling_bridge.retrieval import GalleryItems, build_gallery, search


CAPTIONS = [
    "a red circle",
    "a blue square",
    "a green triangle",
    "a red square left of a blue circle",
    "this is a big green circle",
    "a photo of a small blue triangle",
]


def _exact(model, processor, images, captions):
    inputs = processor(images=images, text=captions, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**inputs)


@pytest.mark.parametrize("rerank", ["fused", "itm"])
def test_two_stage_with_k_all_is_exact_scoring(processor, rerank):
    model = make_model()
    images = random_images(5)
    exact = _exact(model, processor, images, CAPTIONS)
    matrix = exact.logits_per_image if rerank == "fused" else exact.itm_logits[..., 1]  # (images, texts)

    image_gallery = build_gallery(model, processor, images=images, batch_size=2, progress=False)
    t2i = search(model, processor, image_gallery, CAPTIONS, k=len(images), rerank=rerank, batch_size=4)
    expected_scores, expected_indices = matrix.t().sort(dim=1, descending=True, stable=True)
    torch.testing.assert_close(t2i.scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(t2i.indices, expected_indices)

    text_gallery = build_gallery(model, processor, texts=CAPTIONS, batch_size=4, progress=False)
    i2t = search(model, processor, text_gallery, images, k=len(CAPTIONS), rerank=rerank, batch_size=2)
    expected_scores, expected_indices = matrix.sort(dim=1, descending=True, stable=True)
    torch.testing.assert_close(i2t.scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(i2t.indices, expected_indices)


def test_stage_one_is_the_unimodal_top_k(processor):
    model = make_model()
    images = random_images(5)
    exact = _exact(model, processor, images, CAPTIONS)
    unimodal = exact.text_embeds @ exact.image_embeds.t()  # (texts, images) cosines
    gallery = build_gallery(model, processor, images=images, progress=False)
    out = search(model, processor, gallery, CAPTIONS, k=2, rerank=None)
    top = unimodal.topk(2, dim=1)
    torch.testing.assert_close(out.scores, top.values, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.indices, top.indices)
    # re-ranking keeps the same two candidates, ordered by the fused score, and reports their stage-1 scores
    reranked = search(model, processor, gallery, CAPTIONS, k=2)
    assert torch.equal(reranked.indices.sort(1).values, top.indices.sort(1).values)
    torch.testing.assert_close(reranked.unimodal_scores, unimodal.gather(1, reranked.indices), rtol=1e-5, atol=1e-6)
    fused = exact.logits_per_image.t()
    torch.testing.assert_close(reranked.scores, fused.gather(1, reranked.indices), rtol=1e-5, atol=1e-5)
    assert (reranked.scores[:, 0] >= reranked.scores[:, 1]).all()


def test_faiss_gallery_on_disk_equals_the_exact_path(processor, tmp_path):
    pytest.importorskip("faiss")
    from datasets import Dataset, Image

    model = make_model()
    images = random_images(6)
    rows = Dataset.from_dict({"image": images}).cast_column("image", Image())
    memory = build_gallery(model, processor, images=images, progress=False)
    disk = build_gallery(
        model, processor, images=GalleryItems(rows, "image"), cache_dir=tmp_path / "g", progress=False
    )
    info = json.loads((tmp_path / "g" / "bridge_gallery.json").read_text())
    assert info["size"] == 6 and info["modality"] == "image"
    assert disk.embeddings is None and len(disk) == 6 and disk.dim == 8  # stays on disk
    torch.testing.assert_close(torch.tensor(disk.index["embedding"]), memory.embeddings)
    for rerank in (None, "fused"):
        a = search(model, processor, memory, CAPTIONS, k=3, rerank=rerank)
        b = search(model, processor, disk, CAPTIONS, k=3, rerank=rerank)
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    stamp = (tmp_path / "g" / "bridge_gallery.json").stat().st_mtime_ns
    build_gallery(model, processor, images=GalleryItems(rows, "image"), cache_dir=tmp_path / "g", progress=False)
    assert (tmp_path / "g" / "bridge_gallery.json").stat().st_mtime_ns == stamp  # reused, not re-embedded
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        build_gallery(model, processor, images=images, cache_dir=mine, progress=False)
    assert (mine / "notes.txt").read_text() == "keep"


def test_search_errors(processor):
    model = make_model()
    images = random_images(3)
    gallery = build_gallery(model, processor, images=images, progress=False)
    with pytest.warns(UserWarning, match="k=10 is larger than the gallery \\(3 items\\); using k=3"):
        assert search(model, processor, gallery, CAPTIONS[:2], k=10).indices.shape == (2, 3)
    with pytest.raises(ValueError, match="embedded by another model"):
        search(make_model(seed=1), processor, gallery, CAPTIONS[:2], k=2)
    with pytest.raises(ValueError, match="have 8 dimensions but the model embeds into 16"):
        search(make_model(projection_dim=16), processor, gallery, CAPTIONS[:2], k=2)
    with pytest.raises(ValueError, match="rerank must be None, 'fused' or 'itm'"):
        search(model, processor, gallery, CAPTIONS[:2], k=2, rerank="unimodal")
    with pytest.raises(ValueError, match="The image gallery is empty"):
        build_gallery(model, processor, images=[])
    with pytest.raises(ValueError, match="images or texts"):
        build_gallery(model, processor, images=images, texts=CAPTIONS)


def test_retrieval_metric_module_matches_hand_computed_values():
    from pathlib import Path

    import evaluate

    metric = evaluate.load(str(Path(__file__).resolve().parents[1] / "metrics" / "bridge_retrieval"))
    # correct items at ranks 1, 3, 6 and 2 (of 6)
    rankings = [[0, 1, 2, 3, 4, 5], [0, 2, 1, 3, 4, 5], [0, 1, 3, 4, 5, 2], [1, 3, 0, 2, 4, 5]]
    got = metric.compute(predictions=rankings, references=[0, 1, 2, 3], gallery_size=6)
    assert got == {
        "r1": 0.25,
        "r5": 0.75,
        "r10": 1.0,
        "mean_rank": 3.0,
        "median_rank": 2.5,
        "num_queries": 4,
        "complete_rankings": True,
    }
    top2 = metric.compute(predictions=[r[:2] for r in rankings], references=[0, 1, 2, 3], gallery_size=6)
    assert (top2["r1"], top2["r10"], top2["mean_rank"], top2["complete_rankings"]) == (0.25, 0.5, None, False)


def test_retrieval_eval_example_runs_end_to_end(processor, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import run_retrieval_eval

    model = make_model()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    argv = ["--model_name_or_path", str(tmp_path / "model"), "--max_samples", "12", "--k", "1,4,50"]
    results = run_retrieval_eval.main([*argv, "--output_dir", str(tmp_path / "out")])
    for direction in ("text_to_image", "image_to_text"):
        rows = results[direction]
        assert list(rows) == ["unimodal", "two-stage k=1", "two-stage k=4", "exact fused (all pairs)"]
        assert rows["two-stage k=1"]["r1"] == rows["unimodal"]["r1"]  # re-ranking one candidate changes nothing
        assert all(row["mean_rank"] is not None and 1 <= row["mean_rank"] <= 12 for row in rows.values())
    saved = json.loads((tmp_path / "out" / "retrieval_results.json").read_text())
    assert saved["num_pairs"] == 12 and saved["text_to_image"] == results["text_to_image"]
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())  # --num_figures 3 by default
    assert figures == sorted(f"{kind}_{i}.png" for kind in ("words", "search_t2i", "search_i2t") for i in range(3))
    with pytest.raises(ValueError, match="--k must be comma-separated positive integers"):
        run_retrieval_eval.main([*argv[:4], "--k", "0,x", "--output_dir", str(tmp_path / "bad")])


def test_a_gallery_on_disk_depends_on_its_items_the_processor_and_the_weights(processor, tmp_path):
    """1c168be: another gallery of the same size silently returned the old embeddings, and a gallery folder rebuilt
    after the weights changed was refused as foreign."""
    pytest.importorskip("faiss")
    model, folder = make_model(), tmp_path / "g"
    build_gallery(model, processor, texts=CAPTIONS[:3], cache_dir=folder, progress=False)
    other = build_gallery(model, processor, texts=CAPTIONS[3:], cache_dir=folder, progress=False)  # same size
    memory = build_gallery(model, processor, texts=CAPTIONS[3:], progress=False)
    torch.testing.assert_close(torch.tensor(other.index["embedding"]), memory.embeddings)
    images = random_images(3)
    build_gallery(model, processor, images=images, cache_dir=tmp_path / "i", progress=False)
    swapped = build_gallery(model, processor, images=images[::-1], cache_dir=tmp_path / "i", progress=False)
    expected = build_gallery(model, processor, images=images[::-1], progress=False).embeddings
    torch.testing.assert_close(torch.tensor(swapped.index["embedding"]), expected)

    retrained = make_model(seed=1)
    rebuilt = build_gallery(retrained, processor, texts=CAPTIONS[3:], cache_dir=folder, progress=False)
    fresh = build_gallery(retrained, processor, texts=CAPTIONS[3:], progress=False)
    torch.testing.assert_close(torch.tensor(rebuilt.index["embedding"]), fresh.embeddings)
    shorter = build_gallery(retrained, processor, texts=CAPTIONS[3:], cache_dir=folder, max_length=3, progress=False)
    assert not torch.equal(torch.tensor(shorter.index["embedding"]), fresh.embeddings)  # the texts were cut

    (folder / "gallery_embeddings.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match=f"The gallery in {folder} is damaged: gallery_embeddings.arrow has 16 bytes"):
        build_gallery(retrained, processor, texts=CAPTIONS[3:], cache_dir=folder, max_length=3, progress=False)


@pytest.mark.parametrize("on_disk", [False, True])
def test_search_validates_its_arguments_in_memory_and_on_disk(processor, tmp_path, on_disk):
    """1c168be searched a string one character at a time and failed inside torch / FAISS for k = 0, -1, 2.5 and
    for no queries."""
    if on_disk:
        pytest.importorskip("faiss")
    model = make_model()
    images = random_images(3)
    gallery = build_gallery(
        model, processor, images=images, progress=False, cache_dir=tmp_path / "g" if on_disk else None
    )
    one = search(model, processor, gallery, "a red circle", k=2)  # a string is one query
    listed = search(model, processor, gallery, ["a red circle"], k=2)
    assert one.indices.shape == (1, 2) and torch.equal(one.indices, listed.indices)
    text_gallery = build_gallery(model, processor, texts=CAPTIONS, progress=False)
    single = search(model, processor, text_gallery, images[0], k=2)  # one PIL image is one query
    assert torch.equal(single.indices, search(model, processor, text_gallery, images[:1], k=2).indices)
    for k in (0, -1, 2.5, True, "3", None):
        with pytest.raises(ValueError, match=f"k must be a positive integer, got {k!r}"):
            search(model, processor, gallery, CAPTIONS, k=k)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        search(model, processor, gallery, CAPTIONS, k=2, batch_size=0)
    with pytest.raises(ValueError, match="The query list is empty: give at least one text"):
        search(model, processor, gallery, [], k=2)
    with pytest.raises(TypeError, match="The query list must hold strings; item 1 is int, not str"):
        search(model, processor, gallery, ["a red circle", 3], k=2)
    with pytest.raises(TypeError, match="The query list must be a list \\(or tuple\\) of images.*got Tensor"):
        search(model, processor, text_gallery, torch.zeros(2, 3, 32, 32), k=2)
    with pytest.raises(TypeError, match="The text gallery must be a list of texts, got a single str: wrap it"):
        build_gallery(model, processor, texts="a red circle")
    with pytest.raises(ValueError, match="max_length must be a positive integer, got -1"):
        build_gallery(model, processor, texts=CAPTIONS, max_length=-1)


def _processor_with(processor, vocab):
    from transformers import BertTokenizer

    from modeling_bridge import BridgeProcessor

    return BridgeProcessor(image_processor=processor.image_processor, tokenizer=BertTokenizer(vocab=vocab))


def test_a_gallery_on_disk_is_re_embedded_for_another_tokenizer_or_pooling(processor, tmp_path):
    """The first fingerprint covered the tokenizer's class and size and the weights only: a tokenizer with the same
    size but other ids, or another pooling, silently reused the old embeddings."""
    pytest.importorskip("faiss")
    from conftest import VOCAB

    model, folder = make_model(), tmp_path / "g"
    build_gallery(model, processor, texts=CAPTIONS, cache_dir=folder, progress=False)
    words = VOCAB[5:]
    permuted = _processor_with(processor, {w: i for i, w in enumerate(VOCAB[:5] + words[::-1])})
    other = build_gallery(model, permuted, texts=CAPTIONS, cache_dir=folder, progress=False)
    expected = build_gallery(model, permuted, texts=CAPTIONS, progress=False).embeddings
    torch.testing.assert_close(torch.tensor(other.index["embedding"]), expected)

    memory = build_gallery(model, processor, texts=CAPTIONS, progress=False)
    model.config.pooling = "cls"
    with pytest.raises(ValueError, match=r"embedded by another model \(other weights or pooling\)"):
        search(model, processor, memory, random_images(1), k=2)
    pooled = build_gallery(model, processor, texts=CAPTIONS, cache_dir=folder, progress=False)
    torch.testing.assert_close(
        torch.tensor(pooled.index["embedding"]), build_gallery(model, processor, texts=CAPTIONS).embeddings
    )


def test_search_refuses_empty_texts_a_too_short_max_length_and_texts_against_a_text_gallery(processor):
    from datasets import Dataset

    model = make_model()
    gallery = build_gallery(model, processor, images=random_images(3), progress=False)
    for query in ("", "   "):
        with pytest.raises(ValueError, match=r"The query list holds an empty text \(item 0\)"):
            search(model, processor, gallery, query, k=2)
    with pytest.raises(ValueError, match="max_length=2 leaves no room for a word: the tokenizer adds 2 special"):
        search(model, processor, gallery, CAPTIONS, k=2, max_length=2)
    texts = build_gallery(model, processor, texts=CAPTIONS, progress=False)
    with pytest.raises(ValueError, match="The gallery holds texts, so the queries must be images .* 'a red circle'"):
        search(model, processor, texts, "a red circle", k=2)
    column = Dataset.from_dict({"c": ["a red circle", None]})["c"]
    with pytest.raises(TypeError, match="The text gallery must hold strings; item 1 is NoneType, not str"):
        build_gallery(model, processor, texts=column)


def test_the_default_rerank_is_the_models_search_rerank_and_pair_score_is_the_one_rule(processor):
    from modeling_bridge import BridgeForImageTextRetrieval
    from modeling_bridge.modeling_bridge import pair_score

    model = make_model()
    images = random_images(4)
    gallery = build_gallery(model, processor, images=images, progress=False)
    default = search(model, processor, gallery, CAPTIONS, k=3)
    assert model.search_rerank == "fused" and torch.equal(
        default.scores, search(model, processor, gallery, CAPTIONS, k=3, rerank="fused").scores
    )
    head = BridgeForImageTextRetrieval(model.config)
    head.bridge = model
    assert head.search_rerank == "itm"
    torch.testing.assert_close(
        head.search(processor, gallery, CAPTIONS, k=3).scores,
        search(head, processor, gallery, CAPTIONS, k=3, rerank="itm").scores,
    )
    exact = _exact(model, processor, images, CAPTIONS)
    assert torch.equal(pair_score(exact, "itm"), exact.itm_logits[..., 1])
    with pytest.raises(ValueError, match=r"A pair score is one of \('fused', 'itm'\), got 'unimodal'"):
        pair_score(exact, "unimodal")
