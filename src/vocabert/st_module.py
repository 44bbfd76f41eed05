"""vocabert models in sentence-transformers: ``SentenceTransformer(path, trust_remote_code=True)``.

A model folder's ``modules.json`` names :class:`VocabertEmbedding` as its one module. The module
wraps :class:`~vocabert.model.StudentModel`: ``preprocess`` tokenizes as the student does and
``forward`` matches, looks up and pools with the student's own code, so both libraries give the
same vectors. sentence-transformers (>= 6) asks for ``trust_remote_code=True`` because the class
lives outside its own package. This is the one inference module that imports torch. (Not named
``sentence_transformers.py``: with this folder on ``sys.path`` it would shadow the library itself.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

try:
    from sentence_transformers.base.modules import InputModule
except ImportError:  # sentence-transformers < 6 keeps it elsewhere and calls other hooks
    raise ImportError(
        "loading a vocabert model in sentence-transformers needs sentence-transformers>=6: "
        "pip install -U sentence-transformers"
    ) from None

from vocabert.model import StudentModel


class VocabertEmbedding(InputModule):
    """A vocabert student as a sentence-transformers input module that outputs the sentence embedding."""

    config_file_name = "config.json"  # the model's own config.json: the module has no other settings
    save_in_root = True

    def __init__(self, student: StudentModel):
        super().__init__()
        self.student = student
        self.tokenizer = student.tokenizer

    @property
    def max_seq_length(self) -> int:
        return int(self.student.text_tokenizer.max_length)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.student.text_tokenizer.max_length = int(value)

    def get_embedding_dimension(self) -> int:
        return self.student.dim

    def __repr__(self) -> str:
        store, length = self.student.store, self.max_seq_length
        return f"VocabertEmbedding(entries={len(store)}, dim={store.dim}, max_seq_length={length})"

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Token ids of the batch, flattened, and each text's start (``offsets``, one more than texts)."""
        texts = list(inputs)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"a vocabert model encodes strings, got {type(t).__name__}")
        if prompt:
            texts = self._prepend_prompt(texts, prompt)
        ids, offsets = self.student.tokenize(texts)
        return {"input_ids": torch.from_numpy(ids), "offsets": torch.from_numpy(offsets)}

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        ids = features["input_ids"]
        out = self.student.embed_ids(ids.cpu().numpy(), features["offsets"].cpu().numpy())
        features["sentence_embedding"] = torch.from_numpy(out).to(ids.device)
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        # sentence-transformers writes modules.json, its own config and card around this.
        self.student.write_files(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> VocabertEmbedding:
        """The module of a model folder (local, or a Hugging Face repository, which is downloaded whole)."""
        path = cls.load_dir_path(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        return cls(StudentModel.load(Path(path)))
