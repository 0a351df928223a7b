"""accelerate: big-model loading of a small GPT-2.

Accelerator.save_model writes sharded safetensors; init_empty_weights builds the model on the
meta device; load_checkpoint_and_dispatch(device_map="auto") fills it, once all on the CPU and
once with two blocks in a disk offload folder (read back through
safe_open at forward time); transformers' from_pretrained(device_map="auto", and with disk offload)
goes through accelerate too; Accelerator.save_state / load_state round-trips the weights (load_model).
"""

import torch
from accelerate import Accelerator, init_empty_weights, load_checkpoint_and_dispatch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import _harness

CONFIG = dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=3, n_head=2)
PROMPT = torch.tensor([[3, 14, 15, 92, 65]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROMPT).logits


def flow(workdir):
    config = GPT2Config(**CONFIG)
    model = GPT2LMHeadModel(config).eval()
    out = {"built.logits": logits(model)}
    accelerator = Accelerator(cpu=True)
    accelerator.save_model(model, workdir / "saved", max_shard_size="40KB")
    config.save_pretrained(workdir / "saved")
    assert (workdir / "saved" / "model.safetensors.index.json").is_file()

    with init_empty_weights():
        empty = GPT2LMHeadModel(config)
    assert empty.transformer.wte.weight.device.type == "meta"
    empty.tie_weights()
    dispatched = load_checkpoint_and_dispatch(
        empty, workdir / "saved", device_map="auto", no_split_module_classes=["GPT2Block"]
    ).eval()
    assert set(dispatched.hf_device_map.values()) == {"cpu"}, dispatched.hf_device_map
    out["dispatched.logits"] = logits(dispatched)
    out.update({f"dispatched.{k}": v for k, v in dispatched.state_dict().items()})

    with init_empty_weights():
        empty = GPT2LMHeadModel(config)
    empty.tie_weights()
    # Two blocks on "disk" (the tied head cannot be offloaded: accelerate's limit, not ours).
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
                  "transformer.h.1": "disk", "transformer.h.2": "disk", "transformer.ln_f": "cpu",
                  "lm_head": "cpu"}
    offloaded = load_checkpoint_and_dispatch(
        empty, workdir / "saved", device_map=device_map, offload_folder=workdir / "offload",
    ).eval()
    assert "disk" in set(offloaded.hf_device_map.values()), offloaded.hf_device_map
    out["offloaded.logits"] = logits(offloaded)

    from_pretrained = AutoModelForCausalLM.from_pretrained(workdir / "saved", device_map="auto").eval()
    out["from_pretrained_auto.logits"] = logits(from_pretrained)
    # transformers offloads to disk by pointing at the checkpoint's safetensors files.
    from_pretrained = AutoModelForCausalLM.from_pretrained(
        workdir / "saved", device_map=device_map, offload_folder=workdir / "offload2"
    ).eval()
    out["from_pretrained_disk.logits"] = logits(from_pretrained)

    accelerator = Accelerator(cpu=True)
    prepared = accelerator.prepare(GPT2LMHeadModel(config))
    accelerator.save_state(workdir / "state")
    with torch.no_grad():
        for p in prepared.parameters():
            p.zero_()
    accelerator.load_state(workdir / "state")
    out.update({f"state.{k}": v for k, v in prepared.state_dict().items()})
    return out


if __name__ == "__main__":
    _harness.run(flow, {
        "safetensors_c": ["torch.py:save_file", "safe_open.__init__", "torch.py:load_model"],
        "reference": ["torch.py:save_file", "torch.py:load_model"],
    })
