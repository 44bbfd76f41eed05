"""Small, deterministic, local sentence-transformers teachers of five kinds, built from real bundled text.

The pipeline has one real teacher (all-MiniLM-L6-v2: BERT, WordPiece, mean pooling, 384 dimensions); no other
can be downloaded here. These stand-ins cover the other families users distil, each in a few seconds:

============  ==================  ==============================================  =====================  =====
kind          model (config)      tokenizer                                       modules after the      dim
                                                                                  transformer
============  ==================  ==============================================  =====================  =====
bert-cls      BertModel 128h      WordPiece (BertNormalizer lowercase,            Pooling cls,           128
                                  BertPreTokenizer, ``##``), ``[CLS] $A [SEP]``,  Normalize
                                  [PAD] [UNK] [CLS] [SEP] [MASK] = ids 0-4
roberta-dense RobertaModel 96h    byte-level BPE (ByteLevel add_prefix_space      Pooling mean,           64
                                  False: the first word has no ``Ġ``),            Dense 96->64 Tanh
                                  RobertaProcessing ``<s> $A </s>``, <s> <pad>    (not normalized)
                                  </s> <unk> <mask> = ids 0-4
xlmr-unigram  XLMRobertaModel 80h Unigram (NFKC, Metaspace ``▁`` prepend          Pooling mean,           80
                                  always), ``<s> $A </s>``, <s> <pad> </s> <unk>  Normalize
                                  = ids 0-3, <mask> = the last id; > 65,536 ids
                                  (see below)
last-token    Qwen2Model 96h      byte-level BPE whose post-processor appends     Pooling lasttoken,      96
              (decoder, causal)   ``<|endoftext|>`` (eos, id 0) to every text,    Normalize
                                  nothing prepended; pad ``<|pad|>`` (id 1),
                                  right padding
prompts       BertModel 72h       WordPiece as bert-cls                           Pooling mean,           72
                                                                                  Normalize; prompts
                                                                                  query: / passage:
============  ==================  ==============================================  =====================  =====

All have 2 layers, 2-4 heads, max_position_embeddings 256 and max_seq_length 128, a vocabulary of about 8,000
trained on the given texts (xlmr-unigram: padded past 65,536), random weights from ``torch.manual_seed(seed)``
(unless ``train_steps``), saved as safetensors. The folder is what ``SentenceTransformer.save()`` writes
(modules.json, 1_Pooling/config.json, 2_Dense/ ..., config_sentence_transformers.json), plus
``max_seq_length``/``do_lower_case`` in sentence_bert_config.json (sentence-transformers 6 keeps the length in
tokenizer_config.json's model_max_length and accepts the key on load), a special_tokens_map.json (transformers
5 no longer writes one) and tokenizer_class ``PreTrainedTokenizerFast`` (v5 writes ``TokenizersBackend``, which
transformers 4 cannot load). ``legacy_configs=True`` rewrites modules.json, sentence_bert_config.json and
1_Pooling/config.json in the pre-v5 format most published models have (``sentence_transformers.models.X``,
``word_embedding_dimension``, ``pooling_mode_cls_token`` booleans); sentence-transformers loads both.

The >65,535-token Unigram: a UnigramTrainer on a few hundred passages stops near 8,000 pieces (5,757 from 500
passages), so the model is rebuilt from the trained pieces (their scores recomputed, see ``_unigram_scores``,
and numbered by score) with 65,532 filler pieces inserted between the four leading specials and the trained
pieces: one private-use character each (U+F0000 + i, absent from the texts) with score -1000, far below any
trained piece, so Viterbi never picks one and the segmentation is that of the trained pieces alone. Every real
piece therefore has an id above 65,535 (71,294 ids in all from 500 passages): any 16-bit storage of ids shows up
at once. <mask> is the last id, as in XLM-R.

``train_steps`` > 0 trains the transformer first, contrastively, so that its outputs vary from text to text as
a real sentence encoder's do (random weights give a teacher whose vectors barely move: against the mean-pooled
ones a constant vector scores 0.95-0.97, against the random CLS one 1.000). Each step draws ``BATCH`` passages
and makes two views of each: one of its sentences and the rest of it (the inverse cloze task; a passage of one
sentence is cut in halves). The views are pooled as the teacher pools (CLS, mean or last token; before the Dense
layer, which keeps its random initialisation), and the loss is the symmetric InfoNCE over the batch (in-batch
negatives, temperature ``TEMPERATURE``), with dropout on, AdamW at ``LEARNING_RATE``, texts truncated to 128
tokens, one torch thread. The prompts kind puts ``query: `` before the sentence and ``passage: `` before the
rest. The README.md in the folder records the first and last losses. What 1,000 steps on 2,000 passages give
(the teacher's STS-B Spearman, a constant vector's cosine) is in docs/teachers.md; language-model objectives
were tried first and made no better encoders (200 masked- or next-token steps lowered STS-B from 0.47-0.60 to
0.22-0.45), and 300 contrastive steps left the CLS teacher nearly constant (a constant scored 0.93; 0.59 after
1,000).

Builds are deterministic: the same texts and seed give byte-identical model.safetensors and tokenizer.json, in
one process or across processes (tested; with ``train_steps`` too, one torch thread). tokenizers' own
WordPieceTrainer and UnigramTrainer are not (see ``_wordpiece`` and ``_unigram_scores``). The caller's torch
RNG state and thread count are left as they were.

sentence-transformers 6.3 with these folders: it saves the new config format (``pooling_mode: "cls"``,
``embedding_dimension``, no max_seq_length in sentence_bert_config.json, module types
``sentence_transformers.sentence_transformer.modules.pooling.Pooling`` ...) and loads both. On load it adds the
prompts ``"query": ""`` and ``"document": ""`` to any the folder lacks, so for the prompts teacher
``model.prompts`` is {query: "query: ", document: "", passage: "passage: "}: ``encode(prompt_name="query")`` and
``encode_query`` prepend "query: " (and, include_prompt being true, pool over the prompt's tokens: the same
vector as encoding "query: " + text), but ``encode_document`` picks "document" before "passage" and prepends
nothing. Last-token pooling finds the last attended position from the attention mask, so right padding works;
sentence-transformers only forces left padding for its text-generation task, not for feature extraction. The
tokenizer's truncation keeps room for the appended EOS, so a truncated text still ends with it.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import tempfile
from collections import Counter
from pathlib import Path

KINDS = ("bert-cls", "roberta-dense", "xlmr-unigram", "last-token", "prompts")
VOCAB_SIZE = 8000
MAX_POSITIONS = 256
MAX_SEQ_LENGTH = 128
FILLER = 65_532  # xlmr-unigram: filler pieces between the 4 leading specials and the trained pieces
FILLER_SCORE = -1000.0
PROMPTS = {"query": "query: ", "passage": "passage: "}
HIDDEN = {"bert-cls": 128, "roberta-dense": 96, "xlmr-unigram": 80, "last-token": 96, "prompts": 72}
HEADS = {"bert-cls": 4, "roberta-dense": 3, "xlmr-unigram": 2, "last-token": 4, "prompts": 3}
DENSE_OUT = 64  # roberta-dense
OUTPUT_DIM = {**HIDDEN, "roberta-dense": DENSE_OUT}
POOLING = {
    "bert-cls": "cls",
    "roberta-dense": "mean",
    "xlmr-unigram": "mean",
    "last-token": "lasttoken",
    "prompts": "mean",
}
BATCH = 32
LEARNING_RATE = 1e-3
TEMPERATURE = 0.05

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
EOS, PAD = "<|endoftext|>", "<|pad|>"
PRIVATE = 0xF0000  # the supplementary private-use area A: characters absent from the texts


def bundled_texts(data_dir: str | Path, n: int) -> list[str]:
    """The first ``n`` passages of ``data_dir/msmarco_passage/collection_subset.tsv.gz`` (id TAB text)."""
    texts = []
    with gzip.open(Path(data_dir) / "msmarco_passage" / "collection_subset.tsv.gz", "rt", encoding="utf-8") as f:
        for line in f:
            if len(texts) >= n:
                break
            texts.append(line.rstrip("\n").split("\t", 1)[1])
    return texts


# --- tokenizers ---------------------------------------------------------------------------------------------


def _wordpiece(texts: list[str]):
    """A BERT WordPiece tokenizer whose vocabulary is learnt on ``texts`` as WordPieceTrainer does, deterministically.

    WordPieceTrainer is not deterministic (tokenizers 0.22): it numbers the ``##x`` continuation characters in
    the order a hash map yields the words, and ties among the last merges fall differently from run to run. So
    the same BPE training runs here on words whose continuation characters are spelt as distinct private-use
    characters: the trainer numbers every character by code point, and ``##`` is put back afterwards.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = [w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
    later = sorted({c for w in words for c in w[1:]})
    assert len(later) < 0xFFFE and not any(ord(c) >= PRIVATE for w in words for c in w), (
        "private-use characters in texts"
    )
    spell = {c: chr(PRIVATE + i) for i, c in enumerate(later)}
    unspell = {v: k for k, v in spell.items()}
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=BERT_SPECIALS, show_progress=False)
    bpe.train_from_iterator((w[0] + "".join(spell[c] for c in w[1:]) for w in words), trainer)
    vocab = {}
    for piece, i in bpe.get_vocab().items():
        word = "".join(unspell.get(c, c) for c in piece)
        vocab["##" + word if piece[0] in unspell else word] = i
    assert len(vocab) == bpe.get_vocab_size()

    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.add_special_tokens(BERT_SPECIALS)
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]"}
    return tok, {**specials, "mask_token": "[MASK]"}


def _byte_level_bpe(texts: list[str], specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _roberta_bpe(texts: list[str]):
    from tokenizers import AddedToken, processors

    tok = _byte_level_bpe(texts, ROBERTA_SPECIALS)
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>")), add_prefix_space=False
    )
    mask = AddedToken("<mask>", lstrip=True, special=True)
    tok.add_special_tokens([mask])
    return tok, _roberta_specials()


def _roberta_specials() -> dict:
    from tokenizers import AddedToken

    return {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": AddedToken("<mask>", lstrip=True, special=True),
    }


def _eos_bpe(texts: list[str]):
    from tokenizers import processors

    tok = _byte_level_bpe(texts, [EOS, PAD])
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B:1 {EOS}:1", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
    return tok, {"eos_token": EOS, "pad_token": PAD}


def _padded_unigram(texts: list[str]):
    """A Unigram tokenizer trained on ``texts``, padded past 65,536 ids with filler pieces (module docstring)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trained = Tokenizer(models.Unigram())
    trained.normalizer, trained.pre_tokenizer = normalizer, pre_tokenizer
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, unk_token="<unk>", show_progress=False, max_piece_length=16
    )
    trained.train_from_iterator(texts, trainer)
    pieces = [p for p, _ in json.loads(trained.to_str())["model"]["vocab"]]  # [[piece, score], ...]
    assert pieces[: len(specials)] == specials
    pieces = sorted(pieces[len(specials) :])
    words = Counter(w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    scores = _unigram_scores(pieces, words)
    filler = [(chr(PRIVATE + i), FILLER_SCORE) for i in range(FILLER)]
    pieces.sort(key=lambda p: (-scores[p], p))  # most probable first, as SentencePiece numbers them
    vocab = [(p, 0.0) for p in specials] + filler + [(p, scores[p]) for p in pieces] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok.add_special_tokens([*specials, AddedToken("<mask>", lstrip=True, special=True)])
    return tok, _roberta_specials()


def _unigram_scores(pieces: list[str], words: Counter, rounds: int = 3) -> dict[str, float]:
    """Log-probabilities of ``pieces`` by hard EM over ``words`` (word: count), from substring counts.

    UnigramTrainer's own scores differ in the third decimal from run to run (its sums follow hash-map order),
    which reorders pieces and may change segmentations; its piece set has been the same in every run tried.
    """
    from tokenizers import Tokenizer, models

    unique = sorted(words)
    text = "\n".join(w for w in unique for _ in range(words[w]))
    counts = {p: text.count(p) for p in pieces}
    for _ in range(rounds):
        total = sum(counts.values())
        scores = {p: math.log((counts[p] + 0.1) / total) for p in pieces}
        tok = Tokenizer(models.Unigram([("<unk>", 0.0)] + [(p, scores[p]) for p in pieces], 0, False))
        counts = dict.fromkeys(pieces, 0)
        for word, encoding in zip(unique, tok.encode_batch(unique), strict=True):
            for piece in encoding.tokens:
                if piece in counts:
                    counts[piece] += words[word]
    total = sum(counts.values())
    return {p: math.log((counts[p] + 0.1) / total) for p in pieces}


# --- models -------------------------------------------------------------------------------------------------


def _config(kind: str, tok):
    """(config, model class) for ``kind``."""
    import transformers as tf

    hidden, heads, vocab = HIDDEN[kind], HEADS[kind], tok.get_vocab_size()
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=MAX_POSITIONS,
    )
    if kind in ("bert-cls", "prompts"):
        return tf.BertConfig(**common, pad_token_id=tok.token_to_id("[PAD]")), tf.BertModel
    if kind in ("roberta-dense", "xlmr-unigram"):
        ids = dict(
            pad_token_id=tok.token_to_id("<pad>"),
            bos_token_id=tok.token_to_id("<s>"),
            eos_token_id=tok.token_to_id("</s>"),
        )
        if kind == "roberta-dense":
            return tf.RobertaConfig(**common, **ids, type_vocab_size=1), tf.RobertaModel
        return tf.XLMRobertaConfig(**common, **ids, type_vocab_size=1), tf.XLMRobertaModel
    config = tf.Qwen2Config(
        **common,
        num_key_value_heads=heads // 2,
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        bos_token_id=None,
        tie_word_embeddings=True,
        use_sliding_window=False,
        use_cache=False,
    )
    return config, tf.Qwen2Model


def _views(texts: list[str], steps: int, seed: int):
    """``steps`` batches of ``BATCH`` passages drawn with replacement, each as two views of itself: a random
    sentence and the rest of the passage (the inverse cloze task), or its two halves when it has one sentence."""
    import random

    rng = random.Random(seed)
    split = [[s for s in re.split(r"(?<=[.!?])\s+", t.strip()) if s] for t in texts]
    for _ in range(steps):
        first, second = [], []
        for sentences in (split[rng.randrange(len(split))] for _ in range(BATCH)):
            if len(sentences) >= 2:
                i = rng.randrange(len(sentences))
                a, b = sentences[i], " ".join(sentences[:i] + sentences[i + 1 :])
            else:
                words = " ".join(sentences).split()
                a, b = " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])
            first.append(a)
            second.append(b)
        yield first, second


def _padded(tok, texts: list[str]):
    """(input_ids, attention_mask) of ``texts``, truncated to ``MAX_SEQ_LENGTH`` and right-padded."""
    import torch

    rows = [e.ids for e in tok.encode_batch(texts)]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def _pool(kind: str, hidden, mask):
    """The kind's sentence-transformers pooling, in torch (the Dense layer and normalization left out)."""
    if POOLING[kind] == "cls":
        return hidden[:, 0]
    if POOLING[kind] == "lasttoken":
        return hidden[range(len(hidden)), mask.sum(dim=1) - 1]
    return (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)


def _train(kind: str, model, tok, texts: list[str], steps: int, seed: int) -> list[float]:
    """Contrastive training of ``model`` in place (module docstring); the losses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster (much, on a loaded machine) and reproducible
    try:
        return _train_steps(kind, model, tok, texts, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train_steps(kind: str, model, tok, texts: list[str], steps: int, seed: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    tok = tok.__class__.from_str(tok.to_str())  # a copy: truncation stays off the saved tokenizer
    tok.enable_truncation(MAX_SEQ_LENGTH)
    prefix = (PROMPTS["query"], PROMPTS["passage"]) if kind == "prompts" else ("", "")
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    labels = torch.arange(BATCH)
    losses = []
    model.train()  # dropout on: two passes over one text would differ, as in SimCSE
    for first, second in _views(texts, steps, seed):
        pooled = []
        for side, batch in zip(prefix, (first, second), strict=True):
            ids, mask = _padded(tok, [side + t for t in batch])
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled.append(F.normalize(_pool(kind, hidden, mask), dim=-1))
        scores = pooled[0] @ pooled[1].T / TEMPERATURE
        loss = (F.cross_entropy(scores, labels) + F.cross_entropy(scores.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


# --- the folder ---------------------------------------------------------------------------------------------

_TOKENIZERS = {
    "bert-cls": _wordpiece,
    "roberta-dense": _roberta_bpe,
    "xlmr-unigram": _padded_unigram,
    "last-token": _eos_bpe,
    "prompts": _wordpiece,
}


def build_teacher(
    kind: str,
    out_dir: str | Path,
    texts: list[str],
    seed: int = 0,
    train_steps: int = 0,
    legacy_configs: bool = False,
) -> Path:
    """Build the ``kind`` teacher (one of ``KINDS``) from ``texts`` into ``out_dir`` (new or empty); returns it.

    ``train_steps`` > 0 trains the transformer that many steps on ``texts`` first (module docstring);
    ``legacy_configs`` writes the module configs in the pre-v5 sentence-transformers format.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}; one of {', '.join(KINDS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerFast

    try:  # sentence-transformers >= 5.4; sentence_transformers.models warns there
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    tok, specials = _TOKENIZERS[kind](texts)
    config, base_class = _config(kind, tok)
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        base = base_class(config)
        losses = []
        if train_steps > 0:
            losses = _train(kind, base, tok, texts, train_steps, seed)
        base.eval()
        hf_tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok, model_max_length=MAX_SEQ_LENGTH, padding_side="right", **specials
        )
        base.save_pretrained(tmp)
        hf_tokenizer.save_pretrained(tmp)
        modules = [models.Transformer(tmp, max_seq_length=MAX_SEQ_LENGTH)]
        modules.append(models.Pooling(HIDDEN[kind], pooling_mode=POOLING[kind]))
        if kind == "roberta-dense":
            modules.append(models.Dense(HIDDEN[kind], DENSE_OUT, activation_function=torch.nn.Tanh()))
        else:
            modules.append(models.Normalize())
        prompts = PROMPTS if kind == "prompts" else None
        SentenceTransformer(modules=modules, device="cpu", prompts=prompts).save(str(out_dir), create_model_card=False)
    _finish(out_dir, kind, specials, seed, losses, legacy_configs)
    return out_dir


def _json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _finish(out: Path, kind: str, specials: dict, seed: int, losses: list[float], legacy: bool) -> None:
    """What ``save()`` leaves out or writes for sentence-transformers >= 6 / transformers >= 5 only."""
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    _json(out / "tokenizer_config.json", tokenizer_config)

    def token(value):
        if isinstance(value, str):
            return value
        keys = ("content", "lstrip", "normalized", "rstrip", "single_word")
        return {k: getattr(value, k) for k in keys}

    _json(out / "special_tokens_map.json", {name: token(value) for name, value in specials.items()})
    st_config = json.loads((out / "sentence_bert_config.json").read_text(encoding="utf-8"))
    if legacy:
        st_config = {}
        modules = json.loads((out / "modules.json").read_text(encoding="utf-8"))
        for module in modules:
            module["type"] = "sentence_transformers.models." + module["type"].rsplit(".", 1)[1]
        _json(out / "modules.json", modules)
        pooling = json.loads((out / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        legacy_pooling = {"word_embedding_dimension": pooling["embedding_dimension"]}
        for key, mode in (
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_max_tokens", "max"),
            ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
            ("pooling_mode_weightedmean_tokens", "weightedmean"),
            ("pooling_mode_lasttoken", "lasttoken"),
        ):
            legacy_pooling[key] = pooling["pooling_mode"] == mode
        legacy_pooling["include_prompt"] = pooling["include_prompt"]
        _json(out / "1_Pooling" / "config.json", legacy_pooling)
    _json(out / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False, **st_config})
    if kind == "prompts":  # exactly the two prompts, as e5-style folders have (save() adds "document": "")
        st = json.loads((out / "config_sentence_transformers.json").read_text(encoding="utf-8"))
        st["prompts"], st["default_prompt_name"] = dict(PROMPTS), None
        _json(out / "config_sentence_transformers.json", st)
    trained = "random weights"
    if losses:
        k = min(10, len(losses))
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        trained = f"contrastive training, {len(losses)} steps: loss {first:.2f} (first {k}) -> {last:.2f} (last {k})"
    (out / "README.md").write_text(
        f"# synthetic teacher: {kind}\n\nBuilt by vocabert's tests/synthetic_teachers.py (seed {seed}; {trained}).\n"
        "Not a real model: for testing the distillation pipeline only.\n",
        encoding="utf-8",
    )
