"""Prompts: the ensemble's sentences, and what the learnable prompt variants feed the text tower."""
import torch

from zsadlab.backbone import encode_text, tokenize
from zsadlab.prompts import (PromptLearner, ensemble_sentences, inctrl_prompt_texts, plain_sentences,
                             plain_text_features)


def test_ensemble_has_7x35_normal_and_5x35_abnormal_sentences_state_major():
    normal, abnormal = ensemble_sentences("bottle")
    assert (len(normal), len(abnormal)) == (245, 175)
    assert normal[0] == "a bad photo of a bottle." and normal[35] == "a bad photo of a flawless bottle."
    assert abnormal[-1] == "this is one bottle with damage in the scene."


def test_the_clip_baseline_uses_the_papers_two_plain_prompts():
    assert plain_sentences("metal_nut") == ("A photo of a normal metal nut.", "A photo of an anomalous metal nut.")


def test_plain_text_features_encode_exactly_those_two_sentences(clip):
    expected = torch.nn.functional.normalize(encode_text(clip, tokenize(list(plain_sentences("bottle")))), dim=-1)
    got = plain_text_features(clip, "bottle")
    assert got.shape == expected.shape == (2, expected.shape[-1])
    assert torch.allclose(got, expected, atol=1e-6)


def test_inctrl_lists_are_7x22_and_4x22_with_special_names_getting_one_prompt():
    normal, anomaly = inctrl_prompt_texts("bottle")
    assert (len(normal), len(anomaly)) == (154, 88)
    assert inctrl_prompt_texts("dog") == (["a photo of dog for anomaly detection."],
                                          ["a photo without dog for anomaly detection."])


def test_object_agnostic_learner_ignores_the_class_name(clip):
    learner = PromptLearner(clip)
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(clip, "bottle"), learner.text_features(clip, "screw"))


def test_object_aware_learner_puts_the_class_name_in_the_prompt(clip):
    learner = PromptLearner(clip, object_agnostic=False)
    with torch.no_grad():
        bottle, screw = learner.text_features(clip, "bottle"), learner.text_features(clip, "screw")
    assert not torch.allclose(bottle, screw)
    embeddings, eot = learner.prompt_embeddings("metal_nut")
    expected = clip.token_embedding(tokenize("X " * 12 + "damaged metal nut."))[0]
    torch.testing.assert_close(embeddings[1, 13:], expected[13:])  # suffix = the class words, after the contexts
    assert eot[1] == tokenize("X " * 12 + "damaged metal nut.")[0].argmax()


def test_depth_one_has_no_deep_tokens_and_is_plain_clip_on_the_context_embeddings(clip):
    learner = PromptLearner(clip, depth=1)
    assert len(learner.compound_prompts_text) == 0
    with torch.no_grad():  # contexts set to the embedding of the word "X" reproduce the plain text tower
        x = clip.token_embedding(tokenize("X"))[0, 1]
        learner.ctx_pos.copy_(x.expand_as(learner.ctx_pos)); learner.ctx_neg.copy_(x.expand_as(learner.ctx_neg))
        plain = encode_text(clip, tokenize(["X " * 12 + "object.", "X " * 12 + "damaged object."]))
        torch.testing.assert_close(learner.text_features(clip), torch.nn.functional.normalize(plain, dim=-1))


def test_deep_tokens_overwrite_positions_after_sot_in_blocks_2_to_depth(clip):
    learner = PromptLearner(clip, depth=3, t_n_ctx=4)
    hook = learner.deep_prompt_hook()
    x = torch.zeros(2, 16, 64)
    assert torch.equal(hook(1, x), x) and torch.equal(hook(4, x), x)
    out = hook(3, x)
    assert torch.equal(out[:, 1:5], learner.compound_prompts_text[1].detach().expand(2, -1, -1))
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 5:], x[:, 5:])


def test_state_dict_has_the_official_keys_including_the_unused_projections(clip):
    keys = set(PromptLearner(clip, depth=9).state_dict())
    assert {"ctx_pos", "ctx_neg", "token_prefix_pos", "token_suffix_neg", "tokenized_prompts_pos"} <= keys
    assert {f"compound_prompts_text.{i}" for i in range(8)} <= keys
    assert {f"compound_prompt_projections.{i}.weight" for i in range(8)} <= keys
