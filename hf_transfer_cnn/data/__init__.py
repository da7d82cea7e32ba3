"""Image-classification data: sources, robust decoding, transforms and collation for `Trainer`.

Typical use::

    train_ds, eval_ds, id2label = load_image_classification_data(DataArguments(train_dir="data/train"))
    model = TransferModel.from_pretrained(checkpoint, id2label=id2label)
    train_tf, eval_tf = build_transforms(model.image_processor, model.num_input_channels)
    train_ds = with_transforms(train_ds, train_tf)
    eval_ds = with_transforms(eval_ds, eval_tf)
    Trainer(model, args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collate_fn)

(`TrainingArguments(remove_unused_columns=False)` is required: the transform reads the image column,
which Trainer would otherwise drop before the transform runs.)

Policies
--------
* Sources. Exactly one of ``dataset_name`` (a Hub id, a local dataset directory or data file, or a
  `save_to_disk` directory) and ``train_dir`` (an imagefolder ``train_dir/<class>/<image>`` or a
  `save_to_disk` directory) must be given; giving both is an error (no silent precedence).
  ``validation_dir`` only goes with ``train_dir``.
* Evaluation split. ``eval_split_name`` if given, else the first of validation/valid/val/dev that
  exists, else a seeded (stratified when possible) ``train_val_split`` fraction of train; with
  ``train_val_split=0`` there is no eval set (``None``). A "test" split is never picked
  automatically (it stays untouched unless named). A class with a single image cannot be stratified: it
  stays in training (logged), and every class keeps at least one training image.
* Classes. Classification needs two or more classes: data with one class (or only one class left with
  readable training images) is an error, not a one-label (regression) model. Boolean labels are the two
  classes ``False``/``True``.
* Unreadable images (corrupt, truncated, unsupported mode) are found before training by a pass that
  decodes every image once (after ``max_*_samples`` selection) and are dropped, with a warning like
  ``skipped 2 unreadable image(s) of 120 in train (2 undecodable): [...]``; ``on_bad_image="error"`` raises
  instead, naming the file. Images beyond the size limits count as unreadable, judged from the file header
  before any pixel is decoded: more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL itself only warns up to
  twice that) or more elongated than ``max_aspect_ratio`` (default 64:1; 0 turns it off). A split whose
  images are all unreadable is an error. Datasets never change length during an epoch. Images are loaded with the
  ``Image`` feature's ``decode=False`` and decoded here with PIL; ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
  is not touched (if your own code sets it to True, truncated files decode partially and are kept).
* Modes (see `to_8bit`): every image becomes 8-bit ``L`` or ``RGB``. RGBA/LA/PA (and palette images
  with transparency) are alpha-composited on **white** (not alpha-dropped, which would expose whatever
  colour sits under transparent pixels). ``I;16*`` maps 0..65535 linearly to 0..255; ``I`` (32-bit, e.g.
  a numpy int64 array in a dataset) is taken as 8-bit when its values fit in 0..255, as 16-bit when they fit
  in 0..65535, else min-max stretched (per image);
  ``F`` is taken as 0..1 (x255) or 0..255 when it fits one of them, else min-max stretched. CMYK,
  YCbCr, HSV, RGBX ... go through PIL's ``convert("RGB")``. EXIF orientation is applied.
* Channels (see `convert_image`): 1 channel = ``L`` (ITU-R 601 luma), 3 = ``RGB``; 2 = ``L`` plus one
  extra channel, N > 3 = ``RGB`` plus N-3 extra channels. Extra channels are **zero in the final
  normalised tensor** (i.e. they carry no signal; with the model's zero-initialised extra stem
  weights the network starts out exactly as the RGB/gray model).
"""

from .args import DataArguments, TransformArguments
from .folders import write_imagefolder
from .images import convert_image, load_image, to_8bit
from .loading import load_image_classification_data
from .transforms import ImageTransform, build_transforms, collate_fn, with_transforms

__all__ = [
    "DataArguments", "TransformArguments", "load_image_classification_data", "build_transforms",
    "with_transforms", "collate_fn", "load_image", "to_8bit", "convert_image", "ImageTransform", "write_imagefolder",
]
