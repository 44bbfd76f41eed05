"""vocabert: cheap BERT sentence embeddings from a mined phrase vocabulary and a tiny distilled network."""

__version__ = "0.1.0"

from vocabert.artifacts import VocabertError  # noqa: E402
from vocabert.model import StudentModel, load  # noqa: E402

__all__ = ["StudentModel", "VocabertError", "load", "__version__"]
