"""Teacher and students on THUCNews: accuracy, macro-F1, retention, params, fp32 size, wall time.

    python benchmarks/thucnews_students.py [--config examples/thucnews.yaml] [--local]
        [--scratch] [--baseline]

Trains (or reuses from the store) the config's teacher, then distills each student of
`search.students` (each with its `search.student_init`, else its default) with the config's
`distill` settings, on Ray Train unless --local. Retention is a student's test accuracy over the
accuracy of the teacher it was distilled from (the same run's teacher, its cached logits).

--scratch adds the teacher alambic trained from scratch before it had a pretrained model (a
4 x 256 BERT on the bert-base-chinese vocabulary, 3 epochs): the same data, another teacher.
--baseline adds a character 1-2-gram TF-IDF + logistic regression (scikit-learn, the [bench]
extra) fitted on the same train split and scored on the same test split: what a linear model gets.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from alambic import machine
from alambic.run import RunContext
from alambic.train.distill import distill
from alambic.train.teacher import train_teacher

#: the THUCNews teacher examples/thucnews.yaml trained before the pretrained one (from scratch)
SCRATCH_TEACHER = {"model": None, "architecture": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024},
                   "epochs": 3, "batch_size": 64, "learning_rate": 0.0005}


def row(name: str, record: Any, teacher_accuracy: float | None, seconds: float, epochs: int) -> str:
    metrics = record.metrics
    size_mb = (record.path / "model.safetensors").stat().st_size / 2**20
    test = metrics["test"]
    retention = f"{test['accuracy'] / teacher_accuracy:.1%}" if teacher_accuracy else "-"
    return (f"| {name} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} | {retention} | {metrics['params']:,} | "
            f"{size_mb:.1f} | {metrics['wall_time_s'] / epochs:.0f} | {seconds:.0f} | "
            f"{'yes' if record.reused else 'no'} |")


def baseline(ctx: RunContext) -> str:
    """Character 1-2-gram TF-IDF + logistic regression on the run's train split, scored on test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    raw = ctx.prepared.raw
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    features = vectorizer.fit_transform(raw["train"]["text"])
    model = LogisticRegression(max_iter=2000, C=10.0).fit(features, raw["train"]["label"])
    predicted = model.predict(vectorizer.transform(raw["test"]["text"]))
    seconds = time.perf_counter() - start
    truth = raw["test"]["label"]
    return (f"| TF-IDF char 1-2-gram + logistic regression ({len(raw['test']):,} test rows) | "
            f"{accuracy_score(truth, predicted):.4f} | {f1_score(truth, predicted, average='macro'):.4f} | - | "
            f"{model.coef_.size + model.intercept_.size:,} | - | - | {seconds:.0f} | no |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/thucnews.yaml")
    parser.add_argument("--local", action="store_true", help="train in this process, not on Ray Train")
    parser.add_argument("--students", nargs="*", help="student ids (default: the config's search.students)")
    parser.add_argument("--scratch", action="store_true", help="add the from-scratch teacher's row")
    parser.add_argument("--baseline", action="store_true", help="add the TF-IDF + logistic regression row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    ctx = RunContext.open(args.config)
    rows = [baseline(ctx)] if args.baseline else []
    start = time.perf_counter()
    teacher = train_teacher(ctx, local=args.local)
    name = f"teacher {ctx.config.teacher.model or 'from scratch'}"
    teacher_accuracy = teacher.metrics["test"]["accuracy"]
    rows.append(row(name, teacher, None, time.perf_counter() - start, ctx.config.teacher.epochs))
    for student in args.students or ctx.config.search.students:
        start = time.perf_counter()
        record = distill(ctx, student, local=args.local, teacher=teacher)
        label = f"{student} ({record.metrics.get('init', 'random')} init)"
        rows.append(row(label, record, teacher_accuracy, time.perf_counter() - start, ctx.config.distill.epochs))
        print(rows[-1], flush=True)  # each row as soon as it is measured: the whole run takes long
    if args.scratch:  # last: the pretrained rows come first if the run is stopped
        from alambic.config import TeacherConfig

        teacher_config = TeacherConfig.model_validate({**ctx.config.teacher.model_dump(), **SCRATCH_TEACHER})
        scratch = RunContext.from_config(ctx.config.model_copy(update={"teacher": teacher_config}))
        start = time.perf_counter()
        record = train_teacher(scratch, local=args.local)
        rows.insert(int(args.baseline), row("teacher from scratch (4 x 256 BERT)", record, None,
                                            time.perf_counter() - start, SCRATCH_TEACHER["epochs"]))

    print(f"machine: {machine.summary()}")
    print("| model | test accuracy | test macro-F1 | of teacher | params | fp32 MB | s / epoch | stage s | reused |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
