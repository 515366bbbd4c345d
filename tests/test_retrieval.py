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
