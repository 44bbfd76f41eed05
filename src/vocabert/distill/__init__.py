"""Building a model: one module per stage (corpus, mining, embedding, training), the teacher, and the
pipeline that runs them in order over a work directory. Needs torch for the teacher and training."""
