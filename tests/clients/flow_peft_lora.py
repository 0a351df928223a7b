"""peft: a LoRA adapter on a small GPT-2, saved and loaded.

get_peft_model with non-zero LoRA weights, save_pretrained (adapter_model.safetensors),
PeftModel.from_pretrained onto a fresh base, load_adapter of a second adapter, and
merge_and_unload. The base model itself round-trips through transformers.
"""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import _harness

CONFIG = dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=2)
PROMPT = torch.tensor([[7, 1, 30, 64, 2]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROMPT).logits


def flow(workdir):
    GPT2LMHeadModel(GPT2Config(**CONFIG)).save_pretrained(workdir / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                      init_lora_weights=False, fan_in_fan_out=True)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(workdir / "base"), lora).eval()
    out = {"trained.logits": logits(peft_model)}
    peft_model.save_pretrained(workdir / "adapter")
    assert (workdir / "adapter" / "adapter_model.safetensors").is_file()

    second = get_peft_model(AutoModelForCausalLM.from_pretrained(workdir / "base"),
                            LoraConfig(r=2, target_modules=["c_fc"], init_lora_weights=False,
                                       fan_in_fan_out=True))
    second.save_pretrained(workdir / "adapter2")

    base = AutoModelForCausalLM.from_pretrained(workdir / "base")
    loaded = PeftModel.from_pretrained(base, workdir / "adapter").eval()
    out["loaded.logits"] = logits(loaded)
    out.update({f"loaded.{k}": v for k, v in loaded.state_dict().items() if "lora_" in k})
    loaded.load_adapter(workdir / "adapter2", adapter_name="second")
    loaded.set_adapter("second")
    out["second.logits"] = logits(loaded)
    loaded.set_adapter("default")
    merged = loaded.merge_and_unload().eval()
    out["merged.logits"] = logits(merged)
    return out


if __name__ == "__main__":
    _harness.run(flow, {
        "safetensors_c": ["torch.py:save_file", "torch.py:load_file", "safe_open.__init__"],
        "reference": ["torch.py:save_file", "torch.py:load_file"],
    })
