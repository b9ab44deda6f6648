"""Training: the models, the training loop (one process or Ray Train), the teacher and distillation.

Takes tokenized splits and a pretrained checkpoint; hands on a fine-tuned teacher, its logits, and
distilled students, each saved in the store as a model folder keyed by everything that made it.
"""
