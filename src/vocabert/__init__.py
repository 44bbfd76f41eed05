"""vocabert: cheap BERT sentence embeddings from a mined phrase vocabulary and a tiny distilled network."""

from vocabert._version import __version__
from vocabert.artifacts import VocabertError
from vocabert.model import StudentModel, load

__all__ = ["StudentModel", "VocabertError", "load", "__version__"]
