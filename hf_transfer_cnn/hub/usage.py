"""The model card's "How to use" code: which loader and which input a published model needs."""

from __future__ import annotations

__all__ = ["usage_snippet"]


def usage_snippet(ref: str, *, num_channels: int | None, image_size: int | None, loadable: bool) -> list[str]:
    """Markdown lines of the card's "How to use" for the model at `ref` (a Hub id or a path).

    pipeline() for RGB models plain transformers loads (`loadable`); the processor on an L image for gray ones
    (pipeline() converts every image to RGB); a normalised tensor for other channel counts (no image format has
    them); `TransferModel` where plain transformers cannot rebuild the model.
    """
    channels = num_channels or 3
    further = ["With hf-transfer-cnn, `TransferModel.from_pretrained` loads it ready for further transfer learning "
               "(stage freezing, a new head, other input sizes/channels).", ""]
    if loadable and channels == 3:
        return ["Plain transformers loads this model (hf-transfer-cnn is not needed):", "",
                "```python", "from transformers import pipeline", "",
                f'classifier = pipeline("image-classification", model="{ref}")',
                'print(classifier("image.jpg"))', "```", "", *further]
    if loadable:
        intro = ["Plain transformers loads this model (hf-transfer-cnn is not needed). It takes "
                 + ("1-channel (grayscale) images, and `pipeline()` converts every image to RGB, so call the "
                    "processor on an `L` image:" if channels == 1 else
                    f"{channels}-channel input, which `pipeline()` and image files do not give: pass a normalised "
                    "tensor:"), ""]
        imports = ["from transformers import AutoImageProcessor, AutoModelForImageClassification"]
        load = [f'processor = AutoImageProcessor.from_pretrained("{ref}")',
                f'model = AutoModelForImageClassification.from_pretrained("{ref}").eval()']
        tail = ["", *further]
    else:
        intro = ["This model uses hf-transfer-cnn parts (a custom head, an input adapter or a non-transformers "
                 "architecture), so load it with the package (`pip install hf-transfer-cnn`):", ""]
        imports = ["from hf_transfer_cnn import TransferModel"]
        load = [f'model = TransferModel.from_pretrained("{ref}").eval()', "processor = model.image_processor"]
        tail = [""]
    imports, inputs = _inputs(channels, image_size, imports)
    return [*intro, "```python", *imports, "", *load, *inputs, "with torch.no_grad():",
            "    predicted = model(**inputs).logits.argmax(-1).item()",
            "print(model.config.id2label[predicted])", "```", *tail]


def _inputs(channels: int, image_size: int | None, imports: list[str]) -> tuple[list[str], list[str]]:
    """(all import lines, the lines that make ``inputs``): an image file for 1 or 3 channels, else a tensor."""
    if channels in (1, 3):
        image = 'Image.open("image.jpg").convert("L")' if channels == 1 else 'Image.open("image.jpg")'
        inputs = [f'inputs = processor({image}, return_tensors="pt")']
        return ["import torch", "from PIL import Image", *imports], inputs
    size = image_size or 224
    inputs = [f"pixels = torch.rand(1, {channels}, {size}, {size})  # your image(s): {channels} channels, "
              "values in 0..1",
              "mean = torch.tensor(processor.image_mean)[:, None, None]",
              "std = torch.tensor(processor.image_std)[:, None, None]",
              "inputs = {\"pixel_values\": (pixels - mean) / std}"]
    return ["import torch", *imports], inputs
