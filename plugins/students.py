"""Built-in students: three small Chinese encoders, each buildable from config alone.

==================  =====================================================  =============================
id                  architecture (full size)                               hub weights
==================  =====================================================  =============================
roberta-l4          BERT, 4 layers, hidden 512, 8 heads, FFN 2048          uer/chinese_roberta_L-4_H-512
tinybert-4l         BERT, 4 layers, hidden 312, 12 heads, FFN 1200         huawei-noah/TinyBERT_4L_zh
mobilebert-adapter  MobileBERT: 4 layers, 512 wide, bottleneck 128,        none: built from config, then
                    4 heads, 4 stacked FFNs of 512, ReLU, no LayerNorm     initialised from roberta-l4
teacher-layers      the teacher's own architecture, 4 of its layers        the run's teacher: every k-th
                    (``layers`` is its size setting)                       layer, embeddings, pooler, head
==================  =====================================================  =============================

All use bert-base-chinese's vocabulary (21128 tokens) and 512 positions when built from config;
one initialised from pretrained weights (``search.student_init``, ``alambic distill --init``) or
from the teacher's layers tokenizes with the tokenizer that came with those weights. Size overrides
(``layers``, ``hidden``, ``heads``, ``ffn``) shrink them for tests, e.g.
``Student.build(3, layers=2, hidden=64, heads=2, ffn=128)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import alambic
from alambic.errors import AlambicError
from alambic.train.models import (
    CHINESE_VOCAB_SIZE,
    BertStudent,
    Labels,
    Size,
    Student,
    check_divisible,
    label_maps,
)

if TYPE_CHECKING:
    from transformers import MobileBertConfig, PreTrainedModel

    from alambic.registry import KindRegistry


class RobertaL4(BertStudent):
    """Chinese RoBERTa (UER), BERT encoder: 4 layers, hidden 512, 8 heads, FFN 2048."""

    id = "roberta-l4"
    hub_id = "uer/chinese_roberta_L-4_H-512"  # a BertModel checkpoint: the head is new
    size = Size(layers=4, hidden=512, heads=8, ffn=2048)


class TinyBert4L(BertStudent):
    """TinyBERT (Huawei Noah), BERT encoder: 4 layers, hidden 312, 12 heads, FFN 1200."""

    id = "tinybert-4l"
    hub_id = "huawei-noah/TinyBERT_4L_zh"  # the Chinese one: TinyBERT_General_4L_312D is English
    size = Size(layers=4, hidden=312, heads=12, ffn=1200)


class MobileBertAdapter(Student):
    """MobileBERT-style: 4 layers, 512 wide with a 128 bottleneck, ReLU, no LayerNorm, 4 FFNs."""

    id = "mobilebert-adapter"
    hub_id = None  # built from config, then initialised from a trained roberta-l4 student
    # hidden = the inter-block width; attention and the FFNs run inside the bottleneck (hidden // 4)
    size = Size(layers=4, hidden=512, heads=4, ffn=512)
    donor = "roberta-l4"  # distilled first, then transferred in (core/train/mobilebert.py)

    @classmethod
    def prepare_from_donor(
        cls, student: PreTrainedModel, donor: PreTrainedModel, train: object, context: object,
        settings: object,
    ) -> None:
        """Copy what transfers from the trained roberta-l4, then train layer by layer against it.

        Both steps log what they did: the SVD's energy kept and each layer's transfer losses.
        ``settings`` (the distillation's) give the transfer's epochs, step cap, learning rate, seed.
        """
        from alambic.train.mobilebert import init_from_donor, layerwise_transfer

        init_from_donor(student, donor)
        layerwise_transfer(student, donor, train, context, epochs_per_layer=settings.transfer_epochs,
                           batch_size=settings.batch_size, learning_rate=settings.transfer_learning_rate,
                           seed=settings.seed, max_steps=settings.transfer_max_steps)

    @classmethod
    def config(
        cls, num_labels: int, id2label: Labels = None, overrides: Mapping[str, int | None] | None = None
    ) -> MobileBertConfig:
        from transformers import MobileBertConfig

        who = f"student '{cls.id}'"
        size = cls.size.override(overrides, who)
        if size.hidden % 4:
            raise AlambicError(
                f"{who}: hidden={size.hidden} must be divisible by 4 (the bottleneck is hidden // 4)"
            )
        bottleneck = size.hidden // 4  # 128 at full size
        check_divisible(who, bottleneck, size.heads, what="bottleneck (hidden // 4)")
        return MobileBertConfig(
            vocab_size=CHINESE_VOCAB_SIZE,
            max_position_embeddings=512,
            type_vocab_size=2,
            num_hidden_layers=size.layers,
            hidden_size=size.hidden,
            num_attention_heads=size.heads,
            intermediate_size=size.ffn,  # each FFN: bottleneck -> ffn -> bottleneck
            use_bottleneck=True,
            intra_bottleneck_size=bottleneck,  # the "true hidden" width inside each block
            key_query_shared_bottleneck=True,  # queries and keys share one down-projection
            use_bottleneck_attention=False,  # values come from the full-width input
            embedding_size=bottleneck,  # word vectors are narrow; trigram concat -> hidden
            trigram_input=True,
            num_feedforward_networks=4,
            hidden_act="relu",
            normalization_type="no_norm",  # elementwise affine instead of LayerNorm: fast on phones
            **label_maps(num_labels, id2label),
        )

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        from transformers import MobileBertForSequenceClassification

        return MobileBertForSequenceClassification


class TeacherLayers(BertStudent):
    """The teacher's own encoder, every k-th layer kept (DistilBERT-style): 4 layers by default."""

    id = "teacher-layers"
    default_init = "teacher-layers"  # built from the run's teacher; from config only as a fallback
    # from config: bert-base-chinese's width (the teacher's default architecture) at 4 layers;
    # from the teacher: the teacher's own width, heads and FFN, `layers` of its layers
    size = Size(layers=4, hidden=768, heads=12, ffn=3072)


STUDENTS: tuple[type[Student], ...] = (RobertaL4, TinyBert4L, MobileBertAdapter, TeacherLayers)


@alambic.hookimpl
def alambic_register_students(register: KindRegistry) -> None:
    for cls in STUDENTS:
        register.add(cls)
