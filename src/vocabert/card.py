"""The model card (``README.md`` of a model folder), written from the model's config.

The card names the teacher by its public name, never by a path of the machine that built the
model. Its evaluation section sits between two markers; ``vocabert evaluate`` / ``vocabert bench``
replace what is between them, and saving a model over an existing folder keeps it.
"""

from __future__ import annotations

from pathlib import Path

EVAL_START = "<!-- vocabert-eval-start -->"
EVAL_END = "<!-- vocabert-eval-end -->"
NOT_EVALUATED = "Not evaluated yet: run `vocabert evaluate` or `vocabert bench`."


def evaluation_section(card: str) -> str | None:
    """What lies between the eval markers of ``card``, or None where they are missing or out of order."""
    start, end = card.find(EVAL_START), card.find(EVAL_END)
    if start < 0 or end < start or card.count(EVAL_START) != 1 or card.count(EVAL_END) != 1:
        return None
    return card[start + len(EVAL_START) : end].strip("\n")


def read_evaluation(*folders: Path | None) -> str | None:
    """The evaluation section of the first of ``folders`` whose README.md has one."""
    for folder in folders:
        card = folder / "README.md" if folder is not None else None
        if card is not None and card.is_file():
            section = evaluation_section(card.read_text(encoding="utf-8", errors="replace"))
            if section is not None:
                return section
    return None


def teacher_label(config: dict) -> str:
    """The teacher's name as recorded at build time; for configs older than that, its folder's name."""
    provenance = config.get("provenance", {})
    name = provenance.get("teacher_name")
    if not name and provenance.get("teacher_source"):
        name = Path(provenance["teacher_source"]).name
    return str(name or "an unnamed teacher")


def _training(config: dict) -> str:
    """The training section, from what the config records (nothing if it records no training)."""
    training = config.get("training")
    if not isinstance(training, dict):
        return ""
    history, settings = training.get("history", {}), training.get("settings", {})
    lines = []
    if "n_train" in history:
        took = f" in {training['seconds']} s" if "seconds" in training else ""
        lines.append(
            f"Distilled from the teacher's sentence embeddings of {history['n_train']} texts "
            f"({history.get('n_val', 0)} more held out for validation){took}."
        )
    if "best_val_cosine" in history:
        before = history.get("val_cosine_before")
        change = f"{before:.4f} (plain mean of the entry vectors) -> " if isinstance(before, float) else ""
        lines.append(f"Validation cosine to the teacher: {change}{history['best_val_cosine']:.4f}.")
    if settings:
        lines.append("Settings: " + ", ".join(f"{k} {v}" for k, v in sorted(settings.items())) + ".")
    return "## Training\n\n" + "\n".join(lines) + "\n\n" if lines else ""


def model_card(config: dict, evaluation: str | None = None) -> str:
    """The README.md of a model folder. ``evaluation`` goes between the markers (a placeholder if None)."""
    teacher = teacher_label(config)
    provenance = config.get("provenance", {})
    dim, entries, max_length = config.get("dim"), config.get("entries"), config.get("max_length")
    front = ["---", "library_name: vocabert", "pipeline_tag: sentence-similarity"]
    if "/" in teacher:  # a Hub id: the Hub links the card to it
        front.append(f"base_model: {teacher}")
    front += ["tags:", "- vocabert", "- sentence-transformers", "- sentence-similarity", "- static-embeddings", "---"]
    vocabulary = config.get("vocabulary", {})
    mined = (
        f" mined with n-grams up to {vocabulary['max_ngram']} tokens and skip-grams with gaps up to "
        f"{vocabulary['max_gap']}"
        if {"max_ngram", "max_gap"} <= set(vocabulary)
        else ""
    )
    return f"""{chr(10).join(front)}

# vocabert student of {teacher}

A cheap stand-in for the sentence encoder `{teacher}`, built with vocabert: no transformer runs at
inference time. A text is tokenized with the teacher's tokenizer, every vocabulary entry found in it
(tokens, n-grams, skip-grams) contributes its precomputed teacher vector, and a tiny network pools them
into a sentence embedding in the teacher's space.

## Usage

With vocabert (numpy only, no torch needed):

```python
import vocabert

model = vocabert.load("path/to/this/folder")
embeddings = model.encode(["how long do cats live"])  # (1, {dim}) float32, L2-normalized
```

With sentence-transformers (vocabert must be installed; `trust_remote_code=True` lets
sentence-transformers use vocabert's module class, named in `modules.json`):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder", trust_remote_code=True)
embeddings = model.encode(["how long do cats live"])  # the same vectors
```

## Model

- Architecture: `{config.get("architecture")}` (learned weighted mean of the matched entries' vectors, then a
  linear map), output dimension {dim}, L2-normalized.
- Vocabulary: {entries} entries{mined} (listed in `vocabulary.tsv`); vectors stored as
  {config.get("dtype", "float16")} in `model.safetensors`.
- Texts are truncated at {max_length} tokens, as the teacher truncates them.
- Teacher `{teacher}` (fingerprint `{provenance.get("teacher")}`), tokenizer fingerprint
  `{provenance.get("tokenizer")}`; vocabert {config.get("vocabert_version", "?")}.

{_training(config)}## Evaluation

{EVAL_START}
{NOT_EVALUATED if evaluation is None else evaluation}
{EVAL_END}
"""
