"""Saving: weights and config under the native class name, the image processor, an optional Hub upload, and a word
on what the saved folder needs to load outside this package.

`SavingMixin` is one of `TransferModel`'s bases, before the native transformers class (whose `save_pretrained` it
extends); it uses what `TransferModel` defines (``arch``, ``meta``, ``image_processor``, ``_native_class``).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import in_transformers

logger = logging.getLogger(__name__)

__all__ = ["SavingMixin"]


@dataclass
class _HubUpload:
    """A ``push_to_hub=True`` save: the repo, created before saving, and the folder's files as they were then."""

    repo_id: str
    token: Any
    commit_message: str | None
    create_pr: bool
    timestamps: dict

    @classmethod
    def start(cls, model: Any, save_directory: str | os.PathLike, kwargs: dict[str, Any]) -> _HubUpload:
        """Create the repo; takes the upload arguments out of `kwargs` (``token`` stays: saving takes it too)."""
        from huggingface_hub import create_repo

        hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr") if k in kwargs}
        repo_kwargs = {k: kwargs.pop(k) for k in ("private", "repo_type") if k in kwargs}
        token = kwargs.get("token")
        os.makedirs(save_directory, exist_ok=True)
        repo_id = create_repo(hub.pop("repo_id", Path(save_directory).name), token=token, exist_ok=True,
                              **repo_kwargs).repo_id
        return cls(repo_id, token, hub.get("commit_message"), hub.get("create_pr", False),
                   model._get_files_timestamps(save_directory))

    def finish(self, model: Any, save_directory: str | os.PathLike) -> None:
        """Write the model card and upload the files the save wrote or changed."""
        from transformers.utils.hub import create_and_tag_model_card

        create_and_tag_model_card(self.repo_id, model.model_tags, token=self.token).save(
            os.path.join(save_directory, "README.md"))
        model._upload_modified_files(save_directory, self.repo_id, self.timestamps, commit_message=self.commit_message,
                                     token=self.token, create_pr=self.create_pr)


def _saved_names(model: Any, own: dict[str, Any]) -> dict[str, str]:
    """Saved (original-layout) name -> the model's own name, for tensors `save_pretrained` only renames."""
    from transformers.core_model_loading import revert_weight_conversion

    by_id = {id(t): k for k, t in own.items()}
    reverted = revert_weight_conversion(model, dict(own))
    return {saved: by_id[id(t)] for saved, t in reverted.items() if id(t) in by_id and saved != by_id[id(t)]}


class SavingMixin:
    """`save_pretrained` for a TransferModel, and `load_state_dict` that reads what it saved."""

    _told_how_it_loads: bool = False
    """Set on a model once it has logged what its saved folders need (not again at every Trainer checkpoint)."""

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        state_dict: dict | None = None, push_to_hub: bool = False, **kwargs) -> None:
        """Save weights and config under the native class name, plus the image processor.

        ``push_to_hub=True`` (with transformers' ``repo_id``, ``commit_message``, ``create_pr``, ``private``,
        ``token``) uploads the files this call wrote to `save_directory`, as transformers does, but after all
        of them are written (transformers would upload before the config rename and the processor).
        """
        upload = _HubUpload.start(self, save_directory, kwargs) if push_to_hub and is_main_process else None
        super().save_pretrained(save_directory, is_main_process, state_dict, False, **kwargs)
        if not is_main_process:
            return
        native = self._native_class.__name__ if self._native_class else type(self).__name__
        self.config.architectures = [native]
        config = self._config_to_save()
        if not self._told_how_it_loads:
            self._told_how_it_loads = True
            self._tell_how_it_loads(save_directory)
        config.save_pretrained(save_directory)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(save_directory)
        if upload is not None:
            upload.finish(self, save_directory)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, also for a state dict in the checkpoint layout `save_pretrained` writes.

        transformers 5 saves models it has renamed internally (ViT: ``encoder.layer.N.attention.attention.query`` ->
        ``layers.N.attention.q_proj``) under their original names, and Trainer resumes a checkpoint with this method:
        without the renaming back, resuming would silently keep the current weights."""
        own = self.state_dict()
        if any(k not in own for k in state_dict):
            renames = _saved_names(self, own)
            state_dict = {renames.get(k, k): v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict, assign)

    def _config_to_save(self) -> Any:
        """The config as config.json states it: with an input adapter (BiT), a copy stating the input channels, so
        that plain transformers refuses the folder (its stem would not match the weights) instead of loading it
        without the adapter; the backbone's own values go into the ``hf_transfer_cnn`` section."""
        meta = self.meta
        if meta.input_channels is None:
            return self.config
        config = copy.deepcopy(self.config)
        backbone = {}
        for key in self.arch.channels_keys:
            attr, _, inner = key.partition(".")
            backbone[attr] = getattr(self.config, attr, None)
            setattr(config, attr, {**(backbone[attr] or {}), inner: meta.input_channels} if inner
                    else meta.input_channels)
        meta.updated(backbone_config=backbone).write(config)
        return config

    def _tell_how_it_loads(self, save_directory: str | os.PathLike) -> None:
        """Log what a saved folder needs outside this package: a warning where plain transformers would give other
        predictions, refuse, or need remote code."""
        meta = self.meta
        if meta.head:
            logger.warning("%s needs hf_transfer_cnn to load (TransferModel.from_pretrained): plain transformers would "
                           "load it with a fresh linear classifier in place of its custom head (other predictions; its "
                           "load report lists the head as UNEXPECTED).", save_directory)
        elif meta.input_channels is not None:
            logger.warning("%s needs hf_transfer_cnn to load (TransferModel.from_pretrained): its input adapter makes "
                           "plain transformers refuse it (a stem size mismatch).", save_directory)
        elif not in_transformers(self.config.model_type):
            logger.info("%s: without hf_transfer_cnn, load it with trust_remote_code=True (%s is defined in this "
                        "package; its modeling file is saved beside the weights).", save_directory,
                        self.config.model_type)
