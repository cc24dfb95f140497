"""The transformers models of tests/integrations on attngen against their own eager attention: the
figures the suite asserts, printed (CPU, Triton's interpreter, fp32).

    python benchmarks/hf_model_errors.py

Per model: the largest logit difference over the real tokens of a left-padded batch, the largest
parameter-gradient difference (and which parameter), and whether greedy generation (6 new tokens,
cached decoding) gives the same tokens, with its per-step logit difference.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integrations"))

from hf_models import left_padded_batch, pair  # noqa: E402

MODELS = ("llama", "mistral", "qwen2", "gemma2", "gpt_oss")


def loss_and_logits(model, ids, mask, labels):
    logits = model(ids, attention_mask=mask).logits
    real = mask.bool()
    return torch.nn.functional.cross_entropy(logits[real], labels[real]), logits[real]


def generate(model, ids, mask):
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=6, output_logits=True,
                         return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits)


def measure(name: str) -> dict:
    eager, ours = pair(name)
    ids, mask = left_padded_batch()
    labels = torch.randint(0, 64, ids.shape, generator=torch.Generator().manual_seed(2))
    loss_e, logits_e = loss_and_logits(eager, ids, mask, labels)
    loss_o, logits_o = loss_and_logits(ours, ids, mask, labels)
    loss_e.backward()
    loss_o.backward()
    theirs = dict(eager.named_parameters())
    worst = max(((p.grad - theirs[n].grad).abs().max().item(), n) for n, p in ours.named_parameters())
    sequences_e, step_logits_e = generate(eager, ids, mask)
    sequences_o, step_logits_o = generate(ours, ids, mask)
    return dict(logits=(logits_o - logits_e).abs().max().item(), grad=worst[0], grad_param=worst[1],
                same_tokens=torch.equal(sequences_o, sequences_e),
                step_logits=(step_logits_o - step_logits_e).abs().max().item())


def main() -> None:
    import transformers
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print("| model | logits (real tokens) | worst parameter gradient | greedy generation | step logits |")
    print("|---|---|---|---|---|")
    for name in MODELS:
        m = measure(name)
        print(f"| {name} | {m['logits']:.1e} | {m['grad']:.1e} ({m['grad_param']}) | "
              f"{'same tokens' if m['same_tokens'] else 'DIFFERENT tokens'} | {m['step_logits']:.1e} |")


if __name__ == "__main__":
    main()
