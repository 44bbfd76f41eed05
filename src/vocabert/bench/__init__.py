"""How good and how fast a model is, next to the teacher and its peers (``vocabert bench``)."""
