"""Pictures of a match: per-word attention maps over the image grid, and the figures written from them."""

import pytest
import torch
from PIL import Image

from conftest import IMAGE_SIZE, make_model, random_images
from modeling_bridge.visualization import (
    save_search_figure,
    save_word_attention_figure,
    word_attention_maps,
)


def test_word_attention_maps_are_the_text_to_image_attention_on_the_patch_grid(processor):
    model = make_model()
    image, text = random_images(1)[0], "a red circle"
    attention = word_attention_maps(model, processor, image, text)
    assert attention.tokens == ["a", "red", "circle"]
    patch = model.config.vision_config.patch_size
    side = IMAGE_SIZE // patch
    assert attention.maps.shape == (3, side, side)

    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    per_layer = torch.stack([a[0, 0] for a in out.interaction_text_attentions])  # (layers, heads, Nt, Nv)
    expected = per_layer.mean(dim=(0, 1))[1:4, 1:]  # words between [CLS] and [SEP]; image tokens after CLS
    torch.testing.assert_close(attention.maps.flatten(1), expected, rtol=1e-5, atol=1e-6)
    # each map holds the word's attention to image regions: 1 minus what went to the CLS token
    cls_share = per_layer.mean(dim=(0, 1))[1:4, 0]
    torch.testing.assert_close(attention.maps.sum(dim=(1, 2)), 1 - cls_share, rtol=1e-5, atol=1e-6)
    assert attention.score == pytest.approx(float(out.logits_per_image[0, 0]), rel=1e-5)

    last = word_attention_maps(model, processor, image, text, layers=[-1])
    torch.testing.assert_close(last.maps.flatten(1), per_layer[-1].mean(0)[1:4, 1:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="layers must name interaction layers among 0..1"):
        word_attention_maps(model, processor, image, text, layers=[5])


def test_figures_are_written_as_png(processor, tmp_path):
    pytest.importorskip("matplotlib")
    model = make_model()
    images = random_images(3)
    attention = word_attention_maps(model, processor, images[0], "a red circle")
    save_word_attention_figure(images[0], attention, tmp_path / "words.png", title="a red circle")
    save_search_figure("a red circle", images, [3.0, 2.0, 1.0], tmp_path / "t2i.png", [0.5, 0.4, 0.3], target=1)
    save_search_figure(images[0], ["a", "b"], [1.0, 0.5], tmp_path / "i2t.png")
    widths = {}
    for name in ("words", "t2i", "i2t"):
        with Image.open(tmp_path / f"{name}.png") as png:
            assert png.format == "PNG"
            widths[name] = png.width
    assert widths["words"] == pytest.approx(180 * 4, abs=2)  # the image and one panel per word, 1.8 in at 100 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i2t.png", "t2i.png", "words.png"]  # no temporary left
