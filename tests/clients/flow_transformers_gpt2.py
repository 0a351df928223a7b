"""transformers: a small GPT-2 saved and loaded with save_pretrained / from_pretrained.

Single file and sharded (max_shard_size), lm_head tied to the token embeddings, a bfloat16 load
(torch_dtype=torch.bfloat16), and greedy generation from each loaded model.
"""

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import _harness

CONFIG = dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=2)
PROMPT = torch.tensor([[5, 77, 12, 40]])


def tied(model) -> bool:
    return model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def flow(workdir):
    model = GPT2LMHeadModel(GPT2Config(**CONFIG)).eval()
    assert tied(model)
    out = {f"built.{k}": v for k, v in model.state_dict().items()}
    single, sharded = workdir / "single", workdir / "sharded"
    model.save_pretrained(single)
    model.save_pretrained(sharded, max_shard_size="30KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 2

    for tag, path, kwargs in (
        ("single", single, {}),
        ("sharded", sharded, {}),
        ("as_bf16", sharded, {"torch_dtype": torch.bfloat16}),
    ):
        loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
        assert tied(loaded), tag
        with torch.no_grad():
            out[f"{tag}.logits"] = loaded(input_ids=PROMPT).logits
            out[f"{tag}.generated"] = loaded.generate(
                PROMPT, max_new_tokens=6, do_sample=False, pad_token_id=0
            )
        out.update({f"{tag}.{k}": v for k, v in loaded.state_dict().items()})
    return out


if __name__ == "__main__":
    _harness.run(flow, {
        "safetensors_c": ["torch.py:save_file", "safe_open.__init__"],
        "reference": ["torch.py:save_file"],
    })
