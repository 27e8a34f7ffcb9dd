"""Models whose logits are more than `hidden @ lm_head.T`: an lm_head bias (Phi), a logit scale (Cohere, Granite) and a
final-logit soft-cap (Gemma 2). Training, scoring and re-scoring must use the logits the model's own forward gives;
a model whose logits `LogitHead` does not reproduce is refused."""

from __future__ import annotations

import pytest
import torch

from syllabus.core.engines.base import ScoringRequest
from syllabus.core.scoring import response_nll
from syllabus.core.logits import checked_logit_head
from syllabus.core.models import ModelError
from syllabus.core.tokens import Encoded
from syllabus.train.data import collate
from syllabus.train.losses import Objective
from syllabus.train.losses_reference import loss_sums
from syllabus.train.student import DistillStudent

VOCAB = 96
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=64)


def tiny(kind: str, seed: int):
    """A random tiny causal LM of a family whose logits carry the feature named by `kind`."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL))
    elif kind == "bias":  # Phi: lm_head = Linear(..., bias=True)
        model = tf.PhiForCausalLM(tf.PhiConfig(**SMALL))
    elif kind == "softcap":  # Gemma 2: cap * tanh(logits / cap); a small cap so that it matters
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**SMALL, head_dim=16, final_logit_softcapping=2.0))
    elif kind == "scale":  # Cohere: logits * logit_scale
        model = tf.CohereForCausalLM(tf.CohereConfig(**SMALL, logit_scale=0.3))
    elif kind == "scaling":  # Granite: logits / logits_scaling
        model = tf.GraniteForCausalLM(tf.GraniteConfig(**SMALL, logits_scaling=4.0))
    else:
        raise ValueError(kind)
    with torch.no_grad():  # random biases (Phi's are initialised to zero, which would hide a dropped bias)
        head = model.get_output_embeddings()
        if head.bias is not None:
            head.bias.normal_(0.0, 2.0)
    return model.float().eval()


def batch_of_two():
    g = torch.Generator().manual_seed(0)
    def ids(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    rows = [Encoded(ids(5), ids(7), "ok"), Encoded(ids(3), ids(4), "ok")]
    return rows, collate(rows, pad_id=0)


@pytest.mark.parametrize("kind", ["bias", "softcap", "scale", "scaling"])
def test_student_loss_and_gradients_use_the_models_own_logits(kind):
    student, teacher = tiny(kind, 0), tiny(kind, 1).requires_grad_(False)
    _, batch = batch_of_two()
    objective = Objective("jsd", temperature=2.0, kd_weight=0.5)
    with torch.no_grad():
        teacher_hidden = teacher.get_decoder()(input_ids=batch.input_ids,
                                               attention_mask=batch.attention_mask).last_hidden_state
        teacher_logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    ours = DistillStudent(student, chunk_tokens=4)(batch, objective, teacher_hidden[batch.rows, batch.cols],
                                                   checked_logit_head(teacher, "teacher"))
    ours.loss_sum.backward()
    got = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    reference = loss_sums(logits[batch.rows, batch.cols], teacher_logits[batch.rows, batch.cols], batch.targets,
                          objective=objective)
    reference.loss_sum.backward()
    for a, b in zip(ours[:3], reference[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    for name, param in student.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["llama", "bias", "softcap", "scale"])
def test_scoring_nll_uses_the_models_own_logits(kind):
    model = tiny(kind, 0)
    rows, batch = batch_of_two()
    nll = response_nll(model, [ScoringRequest(r.ids, len(r.prompt_ids)) for r in rows], batch_tokens=64, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    token_nll = -logits[batch.rows, batch.cols].log_softmax(-1).gather(1, batch.targets[:, None]).squeeze(1)
    expected = [token_nll[batch.rows == i].mean().item() for i in range(len(rows))]
    assert nll == pytest.approx(expected, rel=1e-5)


def test_logits_it_cannot_reproduce_are_refused():
    import transformers as tf

    class Doubled(tf.LlamaForCausalLM):  # an architecture transforming its logits in a way LogitHead does not know
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    torch.manual_seed(0)
    with pytest.raises(ModelError, match="does not reproduce"):
        checked_logit_head(Doubled(tf.LlamaConfig(**SMALL)), "doubled")
    checked_logit_head(tiny("llama", 0), "llama")  # the plain model passes


def test_nan_weights_are_named_as_damage_not_blamed_on_the_architecture():
    model = tiny("llama", 0)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"non-finite logits .NaN or inf.: 1 weight tensor.s. hold NaN or inf, first "
                                         r"model.layers.1.mlp.down_proj.weight\. The checkpoint is damaged") as refused:
        checked_logit_head(model, "student")
    assert "architecture" not in str(refused.value)
